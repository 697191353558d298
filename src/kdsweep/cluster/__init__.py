"""Running jobs on a cluster: the torchrun/srun launcher and the Slurm profile's variables."""
