"""Every corpus by name: the embedded default's synthetic corpora and the real corpora read from their published
layout, with what the plan assumes of each before it is prepared. Torch-free and cheap: the catalog checks names
here while the Snakefile parses; steermoe.data.registry finds the code that builds or reads each.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Typical:
    """What a corpus is like before it is prepared: mean seconds per utterance, mean target and question bytes (None
    where the generator gives the texts), and published sizes of its training splits {split: (utterances, hours)}."""
    seconds: float | None = None
    target_bytes: float | None = None
    question_bytes: float | None = None
    splits: dict = field(default_factory=dict)


SYNTH_CORPORA = {
    "synth-en": Typical(2.84),  # seconds measured on the built corpus
    "synth-aqa": Typical(),  # scenes, questions and answers from the generator
    "synth-zh": Typical(4.0),  # espeak at 125-170 syllables per minute
    "speech-en": Typical(2.66),  # measured on the built corpus (1.78 h / 2,400)
    "speech-zh": Typical(4.57),  # measured on the built corpus (3.04 h / 2,400)
}

_LIBRISPEECH = {"train-clean-100": (28539, 100.6), "train-clean-360": (104014, 363.6),
                "train-other-500": (148688, 496.7)}


@dataclass(frozen=True)
class RealCorpus:
    reader: str  # its function in steermoe.data.corpora: root folder -> {split: [RawItem | Reject]}
    typical: Typical


REAL_CORPORA = {
    "librispeech": RealCorpus("librispeech_raw", Typical(12.7, 180, 0, _LIBRISPEECH)),  # ~34 words each
    "librispeech-parquet": RealCorpus("librispeech_hf", Typical(12.7, 180, 0, {
        name.replace("-", "."): size for name, size in _LIBRISPEECH.items()})),  # the Hugging Face release's names
    "aishell1": RealCorpus("aishell1", Typical(4.5, 43, 0, {"train": (120098, 150.0)})),  # ~14 characters
    "aishell2": RealCorpus("aishell2", Typical(3.6, 33, 0)),  # 1000 h, ~1M utterances, ~11 characters
    "clotho-aqa": RealCorpus("clotho_aqa", Typical(22.5, 8, 40)),  # 15-30 s clips, one- or two-word answers
    "lhotse": RealCorpus("lhotse_cuts", Typical()),  # any corpus, as Lhotse CutSets: nothing is typical
}
GENERIC = "parquet"  # the generic preparer: any parquet files with an audio and a text column
PREPARE_CORPORA = (*REAL_CORPORA, GENERIC)


def typical(name: str) -> Typical | None:
    """What the plan assumes of corpus `name` before it is prepared; None for a corpus it knows nothing of."""
    return SYNTH_CORPORA.get(name) or (REAL_CORPORA[name].typical if name in REAL_CORPORA else None)
