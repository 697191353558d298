"""A tiny COMET regression metric built offline (random weights, a 2-layer BERT encoder with a
locally trained tokenizer), written in the layout of a downloaded COMET model such as
Unbabel/wmt22-comet-da: `<dir>/hparams.yaml` and `<dir>/checkpoints/model.ckpt`.

Needs COMET's environment (.venv-comet) and kdsweep on PYTHONPATH. The workflow test, in the main
environment, builds one with `PYTHONPATH=src .venv-comet/bin/python tests/tiny_comet.py <dir>`,
which prints the checkpoint's path."""

from pathlib import Path

import pytorch_lightning as ptl
import torch
import yaml
from comet.models import RegressionMetric
from transformers import BertConfig

from kdsweep.glue.tokenizer import train_wordpiece_tokenizer
from kdsweep.translation.synthetic import synthetic_pairs


def build_tiny_comet(out_dir) -> str:
    """Builds the model under `out_dir` and returns the path of its checkpoints/model.ckpt.

    Like a real COMET download, the encoder's weights live in the checkpoint; the encoder folder
    (`pretrained_model` in the hyperparameters, an absolute path) holds only its config and tokenizer,
    which comet.load_from_checkpoint reads with load_pretrained_weights=False."""
    out = Path(out_dir).resolve()
    encoder_dir = out / "encoder"
    tokenizer = train_wordpiece_tokenizer([t for pair in synthetic_pairs(300, seed=7) for t in pair], encoder_dir, 600)
    BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    ).save_pretrained(encoder_dir)

    torch.manual_seed(0)
    model = RegressionMetric(
        encoder_model="BERT",
        pretrained_model=str(encoder_dir),
        layer_transformation="sparsemax",
        layer_norm=False,
        hidden_sizes=[16],
        load_pretrained_weights=False,
        local_files_only=True,
    )
    hparams = dict(model.hparams)
    (out / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    checkpoint = out / "checkpoints" / "model.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": ptl.__version__,
            "epoch": 0,
            "global_step": 0,
        },
        checkpoint,
    )
    return str(checkpoint)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_comet.py OUT_DIR (prints OUT_DIR/checkpoints/model.ckpt, absolute)")
    print(build_tiny_comet(sys.argv[1]))
