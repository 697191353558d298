"""Six English sentences, French translations of them and French references: the metric tests' data
(BLEU and chrF in the main environment, COMET in its own: both import this file from tests/)."""

SOURCES = [
    "The cat is sleeping on the sofa.",
    "We will meet tomorrow at the station.",
    "This book was written in 1850.",
    "She has never seen the sea.",
    "The weather is nice today.",
    "Could you close the window, please?",
]
HYPOTHESES = [
    "Le chat dort sur le canapé.",
    "Nous nous verrons demain à la gare.",
    "Ce livre a été écrit en 1850.",
    "Elle n'a jamais vu la mer.",
    "Il fait beau aujourd'hui.",
    "Pourriez-vous fermer la fenêtre ?",
]
REFERENCES = [
    "Le chat dort sur le canapé.",
    "Nous nous retrouverons demain à la gare.",
    "Ce livre fut écrit en 1850.",
    "Elle n'a encore jamais vu la mer.",
    "Il fait beau temps aujourd'hui.",
    "Pouvez-vous fermer la fenêtre, s'il vous plaît ?",
]
