"""synth-aqa: a deterministic, Clotho-AQA-style audio question answering corpus built from sox sound scenes.

Every row is one short scene (1-3 sound events separated by silences) and one question about it:
    events     a steady tone (low: 200-400 Hz, high: 1800-3000 Hz), white or pink noise, or a run of 1-5 beeps
               (1000 Hz, 0.12 s each); a whole scene is either loud or quiet
    questions  yes/no ("Is there a high-pitched tone?" -> "yes"), counting ("How many beeps are there?" -> "three")
               and which-sound ("What kind of sound comes first?" -> "a beep")
    answers    three reference answers, like Clotho-AQA's three annotators: the majority answer (the `text` target)
               at least twice, sometimes with a plausible variant ("3" for "three", "a high tone" for "a tone")
The scene description is kept apart from the audio (make_scene / questions_for / render_scene are pure functions of
their inputs) so tests can check every answer against the scene and the scene against the rendered sound.
Determinism: one random.Random per split seeded from (seed, split), and sox run with -R (repeatable noise).
"""
from __future__ import annotations

import io
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from steermoe.data.layout import RawItem, only_splits, prepare_corpus
from steermoe.declare.settings import SAMPLE_RATE

CORPUS = "synth-aqa"
DEFAULT_SIZES = {"train": 600, "dev": 60, "test": 120}

BEEP_HZ = 1000.0
BEEP_SECONDS = 0.12
BEEP_GAP_SECONDS = 0.18
LOW_TONE_HZ = (200, 400)
HIGH_TONE_HZ = (1800, 3000)
LOUD_RMS, QUIET_RMS = 0.2, 0.015  # per sound segment; about 22 dB apart, so "loud" is never ambiguous
NOISE_OFFSET_MAX = 2.0  # seconds; sox -R gives the same noise stream every call, so each segment starts elsewhere in it
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five"]


@dataclass(frozen=True)
class Segment:
    kind: str  # "tone", "noise", "beep" or "silence"
    duration: float  # seconds
    freq: float = 0.0  # Hz, tones and beeps
    color: str = ""  # "white" or "pink", noise
    offset: float = 0.0  # seconds into sox's repeatable noise stream, noise

    @property
    def pitch(self) -> str:
        return "high" if self.freq >= HIGH_TONE_HZ[0] else "low"


@dataclass(frozen=True)
class Scene:
    segments: tuple[Segment, ...]
    loud: bool

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    @property
    def events(self) -> list[str]:
        """Sound events in order: "tone", "noise" or "beeps" (a run of beeps is one event)."""
        events = []
        previous = None  # the last non-silent segment kind; silence between beeps does not split the run
        for segment in self.segments:
            if segment.kind == "silence":
                continue
            if not (segment.kind == "beep" and previous == "beep"):
                events.append("beeps" if segment.kind == "beep" else segment.kind)
            previous = segment.kind
        return events

    @property
    def beep_count(self) -> int:
        return sum(s.kind == "beep" for s in self.segments)

    def has_tone(self, pitch: str) -> bool:
        return any(s.kind == "tone" and s.pitch == pitch for s in self.segments)


class QA(NamedTuple):
    kind: str  # "yes/no", "count" or "which"
    question: str
    answer: str  # the majority answer, the training target
    answers: tuple[str, str, str]  # the three reference answers


@dataclass(frozen=True)
class AqaExample:
    id: str
    scene: Scene
    qa: QA


def _seconds(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 2)  # centisecond steps keep scene descriptions readable


def _event_segments(kind: str, rng: random.Random) -> list[Segment]:
    if kind == "tone":
        low, high = LOW_TONE_HZ if rng.random() < 0.5 else HIGH_TONE_HZ
        return [Segment("tone", _seconds(rng, 0.6, 1.5), freq=float(rng.randrange(low, high + 1, 10)))]
    if kind == "noise":
        return [Segment("noise", _seconds(rng, 0.6, 1.5), color=rng.choice(["white", "pink"]),
                        offset=_seconds(rng, 0.0, NOISE_OFFSET_MAX))]
    beeps = []
    for index in range(rng.randint(1, 5)):
        if index:
            beeps.append(Segment("silence", BEEP_GAP_SECONDS))
        beeps.append(Segment("beep", BEEP_SECONDS, freq=BEEP_HZ))
    return beeps


def make_scene(rng: random.Random) -> Scene:
    """1-3 events (at most one run of beeps, so the beep count is one number) with silences around and between."""
    kinds = []
    for _ in range(rng.randint(1, 3)):
        kinds.append(rng.choice(["tone", "noise"] if "beeps" in kinds else ["tone", "noise", "beeps"]))
    segments = [Segment("silence", _seconds(rng, 0.1, 0.4))]
    for index, kind in enumerate(kinds):
        if index:
            segments.append(Segment("silence", _seconds(rng, 0.3, 0.6)))  # longer than a beep gap: runs stay apart
        segments.extend(_event_segments(kind, rng))
    segments.append(Segment("silence", _seconds(rng, 0.1, 0.4)))
    return Scene(tuple(segments), loud=rng.random() < 0.5)


# the main answer naming each event, and the variants an annotator might write instead
_EVENT_NAMES = {"tone": "a tone", "noise": "noise", "beeps": "a beep"}


def _event_variants(scene: Scene, position: int) -> list[str]:
    event = scene.events[position]
    if event == "tone":
        tones = [s for s in scene.segments if s.kind == "tone"]
        tone = tones[scene.events[:position].count("tone")]
        return [f"a {tone.pitch} tone", f"a {tone.pitch}-pitched tone"]
    if event == "noise":
        return ["static", "hissing"]
    return ["beeping", "beeps"]


def _three(answer: str, variants: list[str], rng: random.Random) -> tuple[str, str, str]:
    """Three annotators: usually unanimous, sometimes one writes a variant (the majority stays `answer`)."""
    answers = [answer] * 3
    if variants and rng.random() < 0.35:
        answers[rng.randrange(3)] = rng.choice(variants)
    return tuple(answers)


def questions_for(scene: Scene, rng: random.Random) -> list[QA]:
    """Every question this scene can answer; rng only picks annotator variants."""
    noise = "noise" in scene.events
    beeps = scene.beep_count > 0
    yes_no = [
        ("Is there a high-pitched tone?", scene.has_tone("high")),
        ("Is there a low-pitched tone?", scene.has_tone("low")),
        ("Is there any noise?", noise),
        ("Can you hear noise in the recording?", noise),
        ("Are there any beeps?", beeps),
        ("Is the sound loud?", scene.loud),
        ("Is the sound quiet?", not scene.loud),
        ("Is there more than one sound?", len(scene.events) > 1),
    ]
    qas = [QA("yes/no", question, "yes" if truth else "no", ("yes" if truth else "no",) * 3)
           for question, truth in yes_no]
    if beeps:
        word = NUMBER_WORDS[scene.beep_count]
        for question in ("How many beeps are there?", "How many times does it beep?"):
            qas.append(QA("count", question, word, _three(word, [str(scene.beep_count)], rng)))
    last = len(scene.events) - 1
    for question, position in (("What kind of sound comes first?", 0), ("What kind of sound is heard first?", 0),
                               ("What kind of sound comes last?", last)):
        name = _EVENT_NAMES[scene.events[position]]
        qas.append(QA("which", question, name, _three(name, _event_variants(scene, position), rng)))
    return qas


def _sox(duration: float, *synth: str) -> np.ndarray:
    """sox's synth effect -> float32 mono at SAMPLE_RATE, shape (samples,); -R makes noise repeatable."""
    command = ["sox", "-R", "-V1", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-t", "f32", "-",
               "synth", f"{duration:.3f}", *synth]
    return np.frombuffer(subprocess.run(command, capture_output=True, check=True).stdout, dtype=np.float32)


def _render_segment(segment: Segment, rms: float) -> np.ndarray:
    samples = round(segment.duration * SAMPLE_RATE)
    if segment.kind == "silence":
        return np.zeros(samples, dtype=np.float32)
    if segment.kind == "noise":
        stream = _sox(segment.offset + segment.duration, f"{segment.color}noise")
        audio = stream[round(segment.offset * SAMPLE_RATE):][:samples]
    else:  # tone or beep: a sine with 10 ms fades so the edges do not click
        audio = _sox(segment.duration, "sine", f"{segment.freq:g}", "fade", "h", "0.01", f"{segment.duration:.3f}",
                     "0.01")[:samples]
    audio = np.pad(audio, (0, samples - len(audio)))  # sox may round the length down by a sample
    return (audio * (rms / np.sqrt(np.mean(audio.astype(np.float64) ** 2)))).astype(np.float32)


def render_scene(scene: Scene) -> bytes:
    """The scene as 16 kHz mono 16-bit WAV bytes; every sound segment at the scene's loudness (RMS)."""
    import soundfile as sf

    rms = LOUD_RMS if scene.loud else QUIET_RMS
    audio = np.concatenate([_render_segment(s, rms) for s in scene.segments])  # (samples,)
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def plan_split(split: str, size: int, seed: int = 0) -> list[AqaExample]:
    """The scenes and questions of one split, without audio; build_synth_aqa renders exactly these."""
    rng = random.Random(f"{CORPUS}/{seed}/{split}")  # a str seed is hashed with sha512: stable across runs
    examples = []
    for index in range(size):
        scene = make_scene(rng)
        qas = questions_for(scene, rng)
        kind = rng.choice(sorted({qa.kind for qa in qas}))  # balance question kinds, not question templates
        qa = rng.choice([qa for qa in qas if qa.kind == kind])
        examples.append(AqaExample(f"aqa-{split}-{index:06d}", scene, qa))
    return examples


def build_synth_aqa(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0,
                    workers: int | None = None, progress: bool = True, only: list[str] | None = None) -> dict:
    """Render and prepare every split (or the `only` ones, as a full build would) into out_dir (the common
    layout); returns the manifest."""
    splits = {}
    with ThreadPoolExecutor(workers or 2) as pool:  # threads suffice: the work is in the sox processes
        for split, size in only_splits(sizes or DEFAULT_SIZES, only).items():
            examples = plan_split(split, size, seed)
            audios = pool.map(lambda example: render_scene(example.scene), examples)
            splits[split] = [RawItem(id=example.id, audio=audio, text=example.qa.answer,
                                     source=f"{CORPUS} seed {seed}", speaker="sox", language="en",
                                     prompt=example.qa.question, answers=list(example.qa.answers))
                             for example, audio in zip(examples, audios)]
    return prepare_corpus(CORPUS, splits, out_dir, workers=workers, progress=progress)
