"""Labelled speech for lip-sync measurement: sentences with their synthesiser's own phone timings.

Three synthesisers, each reporting what it said and when: flite's `-psdur` prints the end time of every
phone, espeak-ng reports a phoneme event at every phone's first sample (`facecast.tts.espeak`), and
Debian's festival gives the end time of every item of its utterance's Segment relation. Voices and
sentences are split: the tracker is tuned on TUNING_VOICES x SENTENCES only; HELD_OUT_VOICES x
HELD_OUT_SENTENCES (other accents, other synthesisers than the tuning voices', unseen words) is what
tells how it does on speech it has never met. The truth track is built with the engine's own
phone → viseme table and coarticulation (`facecast.engine.visemes`), so that a measured difference is
a tracking difference, never a mapping difference.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import soundfile as sf

from facecast.engine.visemes import (
    CLOSED_INDEX,
    OPEN_COLUMN,
    TRACK_HZ,
    VISEME_INDEX,
    coarticulate,
    phone_to_viseme,
)

# Varied English: questions, numbers, names, clusters, and many bilabials (m/b/p), because lip
# closures are what viewers notice first and what an energy tracker cannot produce.
SENTENCES: tuple[str, ...] = (
    "Bob made my maple pie, please.",
    "The quick brown fox jumps over the lazy dog.",
    "Please pass the bread and butter to Pam.",
    "My mother bought a big blue umbrella in Boston.",
    "Would you like some more pepper on your potatoes?",
    "Members of the public may apply by the first of March.",
    "We will meet at the museum at three thirty.",
    "Peter Piper picked a peck of pickled peppers.",
    "How about a movie tonight, or maybe tomorrow?",
    "Her bright purple balloon floated above the palm trees.",
    "I think the problem is simple, but the fix may be big.",
    "Every morning the baker opens his shop at six.",
    "Can you remember the number of the main building?",
    "Bees buzz happily among the blooming apple branches.",
    "The committee approved the budget with a narrow margin.",
    "Thank you for calling, how may I help you today?",
    "A warm bath helps me sleep much better.",
    "Please book a table for two at seven o'clock.",
    "Maybe the map is wrong, or maybe we missed the bridge.",
    "Jim brought home a box of plums and some bananas.",
)

# Never used for tuning anything: sentences of other domains, with words the tuning set lacks.
HELD_OUT_SENTENCES: tuple[str, ...] = (
    "Gently fold the whipped cream into the chocolate mixture.",
    "The ferry leaves the harbour at quarter past nine.",
    "Our new printer jams whenever somebody prints a map.",
    "Wolves howled beyond the frozen lake all night.",
    "Please remember to bring your passport and a pen.",
    "A thousand bubbles rose from the bottom of the glass.",
    "Valerie plays the oboe in the city orchestra.",
    "Why would anybody paint a purple cow on a barn?",
    "The lamp flickered, then the whole room went dark.",
    "My brother mopped the floor before the party began.",
    "Few people know how much work a small garden needs.",
    "Tim bumped his elbow on the metal cabinet.",
)

# What the mouth classifier is trained on (`facecast.bench.train_mouth`, tuning voices only): sentences
# that neither benchmark set speaks, so that the tuning column stays out of sample in its sentences.
TRAINING_SENTENCES: tuple[str, ...] = (
    "Put the parcel by the back door when nobody is home.",
    "A small boat drifted past the pier in the morning mist.",
    "Mark bought fresh bread, milk and a jar of plum jam.",
    "The pilot announced a brief delay before boarding.",
    "Did you see the film about the bears in the mountains?",
    "Olivia keeps her umbrella behind the office door.",
    "Nine people waited patiently outside the bakery.",
    "The rabbit jumped over the fence and ran into the woods.",
    "Please measure the window before buying new blinds.",
    "My neighbour plays the trumpet every evening at eight.",
    "They moved to a cottage by the sea last summer.",
    "Sam spilled bubbly lemonade on his brand new shoes.",
    "Cook the pasta for eleven minutes, then drain it well.",
    "The museum opens at ten and closes at five on Sundays.",
    "A young boy threw pebbles into the calm pond.",
    "Could you bring me the blue folder from my desk?",
    "The storm knocked down power lines across the valley.",
    "Maple syrup tastes wonderful on warm pancakes.",
    "We watched the fireworks from the top of the hill.",
    "Emma painted a picture of a bright yellow submarine.",
    "The doctor told him to rest and drink plenty of water.",
    "Ben plans to build a bigger barn before the winter.",
    "How many tickets are left for the Saturday show?",
    "The choir practised the hymn again and again.",
    "Paul mumbled something about a missing map.",
    "Her voice was soft, but everybody heard her clearly.",
    "The team celebrated with pizza and cold apple juice.",
    "Remember to water the tomatoes twice a week.",
    "A big brown bear wandered through the camp at dawn.",
    "The old clock on the wall stopped at midnight.",
    "We might miss the bus if we do not hurry.",
    "Bright lamps lit up the empty market square.",
    "The puppy chewed my favourite pair of boots.",
    "I would love a cup of mint tea with honey.",
    "Every member must vote before the meeting ends.",
    "The library lends books, music and maps for free.",
    "Jump in the pool and swim to the other side.",
    "Mum baked a lemon pie for the birthday party.",
    "The typhoon moved slowly toward the southern islands.",
    "Bill opened the envelope and smiled at the photo.",
)

# flite voices are bare names (kal is an 8 kHz voice; kal16 is the same voice at 16 kHz); espeak-ng
# voices are "espeak:<voice>[+variant]", festival voices "festival:<voice>". The CMN prior and the
# recogniser settings were chosen on flite slt/kal16/awb/rms and espeak-ng en/en-us, so those are the
# tuning voices.
FLITE_VOICES: tuple[str, ...] = ("slt", "kal", "kal16", "awb", "rms")
ESPEAK_PREFIX = "espeak:"
FESTIVAL_PREFIX = "festival:"
# The English festival voices Debian serves (bookworm main), and the package each comes in. kal_diphone
# is the diphone set flite's kal16 (a tuning voice) was built from, so it is not held out.
FESTIVAL_PACKAGES: dict[str, str] = {
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
    "kal_diphone": "festvox-kallpc16k",
}
FESTIVAL_VOICES: tuple[str, ...] = tuple(FESTIVAL_PREFIX + v for v in FESTIVAL_PACKAGES)
# espeak-ng speaker variants of the two tuning accents, added for the mouth classifier's training (the
# recogniser settings were chosen without them): with flite slt its only female voice, it read
# espeak-ng's female variants worst. None is a held-out accent or variant (f2, f3, m3, m7).
ESPEAK_VARIANT_TUNING_VOICES: tuple[str, ...] = (
    "espeak:en-us+f1",
    "espeak:en+f4",
    "espeak:en-us+f5",
    "espeak:en+m2",
    "espeak:en-us+m6",
    "espeak:en+Annie",
)
TUNING_VOICES: tuple[str, ...] = (
    "slt",
    "kal16",
    "awb",
    "rms",
    "espeak:en-us",
    "espeak:en",
    *ESPEAK_VARIANT_TUNING_VOICES,
)
# Accents and speaker variants the project never looked at (kal is kal16 at 8 kHz, so it is neither),
# and festival's diphone speaker ked and its HTS voice of slt (the speaker of flite's slt, synthesised
# by another method: statistical HTS at 32 kHz, not flite's clustergen).
HELD_OUT_ESPEAK_VOICES: tuple[str, ...] = (
    "espeak:en-gb-scotland",
    "espeak:en-029+f2",
    "espeak:en-us-nyc+m3",
    "espeak:en-gb-x-rp+f3",
    "espeak:en-gb-x-gbclan+m7",
)
HELD_OUT_FESTIVAL_VOICES: tuple[str, ...] = ("festival:ked_diphone", "festival:cmu_us_slt_arctic_hts")
HELD_OUT_VOICES: tuple[str, ...] = HELD_OUT_ESPEAK_VOICES + HELD_OUT_FESTIVAL_VOICES
VOICES: tuple[str, ...] = TUNING_VOICES[:4]  # the flite tuning voices: the corpus before the split
ALL_VOICES: tuple[str, ...] = (
    FLITE_VOICES
    + TUNING_VOICES[4:]
    + HELD_OUT_VOICES
    + tuple(v for v in FESTIVAL_VOICES if v not in HELD_OUT_VOICES)
)
# What the held-out set needs (the test script installs the same).
FESTIVAL_INSTALL = "apt-get install festival " + " ".join(
    FESTIVAL_PACKAGES[v.removeprefix(FESTIVAL_PREFIX)] for v in HELD_OUT_FESTIVAL_VOICES
)

_CACHE_FORMAT = 2


class SynthesiserMissingError(RuntimeError):
    """A synthesiser or voice needed to make labelled speech is not installed."""


class FliteMissingError(SynthesiserMissingError):
    """flite is needed to make labelled speech."""


class FestivalMissingError(SynthesiserMissingError):
    """festival, or one of its voices, is needed to make labelled speech."""


@dataclass(frozen=True, slots=True)
class Phone:
    """One synthesised phone: ARPAbet label (flite lower case) and its span in seconds."""

    phone: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Word:
    """One synthesised word and the span of its phones in seconds (what a TTS with word timestamps
    reports): espeak-ng's word events, festival's Word relation; flite gives none."""

    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth at TRACK_HZ (frame j covers [j, j+1) / TRACK_HZ seconds, decided at its centre)."""

    codes: np.ndarray  # (N,) int viseme index per track frame
    open: np.ndarray  # (N,) float openness after coarticulation
    closures: tuple[tuple[float, float], ...]  # m/b/p phone spans in seconds

    @property
    def rate_hz(self) -> int:
        return TRACK_HZ


@dataclass(frozen=True)
class Utterance:
    uid: str
    text: str
    voice: str
    wav_path: Path
    sample_rate: int
    phones: tuple[Phone, ...]
    words: tuple[Word, ...] = ()  # empty where the synthesiser does not time its words (flite)

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @cached_property
    def num_samples(self) -> int:
        return sf.info(str(self.wav_path)).frames

    def audio(self) -> np.ndarray:
        """Mono int16 samples at `sample_rate`."""
        data, _ = sf.read(str(self.wav_path), dtype="int16", always_2d=True)
        return np.ascontiguousarray(data[:, 0])

    @cached_property
    def truth(self) -> Truth:
        return truth_track(self.phones, self.duration)


def find_flite() -> str:
    path = shutil.which("flite")
    if path is None:
        raise FliteMissingError(
            "flite is not installed; the lip-sync benchmark needs it for speech with phoneme timings "
            "(Debian/Ubuntu: `apt-get install flite`)"
        )
    return path


def have_flite() -> bool:
    return shutil.which("flite") is not None


def parse_psdur(output: str) -> tuple[Phone, ...]:
    """Parse flite `-psdur` output (`phone:end_time` tokens separated by whitespace)."""
    phones: list[Phone] = []
    start = 0.0
    for token in output.split():
        name, sep, end_text = token.rpartition(":")
        if not sep or not name:
            continue
        try:
            end = float(end_text)
        except ValueError:
            continue
        phones.append(Phone(name, start, max(start, end)))
        start = max(start, end)
    if not phones:
        raise ValueError(f"no phone timings in flite output: {output[:200]!r}")
    return tuple(phones)


def truth_track(phones: Sequence[Phone], duration: float) -> Truth:
    """Viseme code per 10 ms track frame (the phone covering the frame's centre), coarticulated
    openness, and the m/b/p phone spans."""
    n = int(np.ceil(duration * TRACK_HZ - 1e-9))
    centres = (np.arange(n) + 0.5) / TRACK_HZ
    codes = np.full(n, VISEME_INDEX["X"], dtype=np.int64)
    ends = np.array([p.end for p in phones])
    idx = np.searchsorted(ends, centres, side="right")
    inside = idx < len(phones)
    phone_codes = np.array([VISEME_INDEX[phone_to_viseme(p.phone)] for p in phones], dtype=np.int64)
    codes[inside] = phone_codes[idx[inside]]
    params = coarticulate(codes)
    closures = tuple(
        (p.start, p.end)
        for p, c in zip(phones, phone_codes, strict=True)
        if c == CLOSED_INDEX and p.end > p.start
    )
    return Truth(codes=codes, open=params[:, OPEN_COLUMN].astype(np.float64), closures=closures)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facecast" / "bench"


def _key(text: str, voice: str) -> str:
    return hashlib.sha1(f"{_CACHE_FORMAT}|{voice}|{text}".encode()).hexdigest()[:16]


def is_espeak(voice: str) -> bool:
    return voice.startswith(ESPEAK_PREFIX)


def is_festival(voice: str) -> bool:
    return voice.startswith(FESTIVAL_PREFIX)


def synthesiser(voice: str) -> str:
    """Which program speaks `voice`: "flite", "espeak-ng" or "festival"."""
    return "espeak-ng" if is_espeak(voice) else "festival" if is_festival(voice) else "flite"


@functools.cache
def festival_voices() -> frozenset[str]:
    """The voices the installed festival knows (empty when festival is not installed)."""
    festival = shutil.which("festival")
    if festival is None:
        return frozenset()
    proc = subprocess.run(
        [festival, "--pipe"], input="(print (voice.list))\n", capture_output=True, text=True, check=False
    )
    return frozenset(proc.stdout.strip().strip("()").split()) if proc.returncode == 0 else frozenset()


def have_festival_voice(voice: str) -> bool:
    """Whether "festival:<voice>" (or a bare festival voice name) can be spoken here."""
    return voice.removeprefix(FESTIVAL_PREFIX) in festival_voices()


def find_festival_voice(voice: str) -> str:
    """The festival binary, once it is known to have `voice` (a bare festival voice name)."""
    festival = shutil.which("festival")
    package = FESTIVAL_PACKAGES.get(voice)
    install = f"`apt-get install {package}`" if package else "install its festvox package"
    if festival is None:
        raise FestivalMissingError(
            f"festival is not installed; voice {voice!r} needs it (Debian/Ubuntu: `{FESTIVAL_INSTALL}`)"
        )
    if voice not in festival_voices():
        known = ", ".join(sorted(festival_voices())) or "none"
        raise FestivalMissingError(
            f"festival has no voice {voice!r} (it has: {known}); Debian/Ubuntu: {install}"
        )
    return festival


# What a cached label file holds; files of another version are made again. 2: word times (espeak-ng,
# festival) and espeak-ng's linking glide ";" as Y (was a generic consonant).
LABELS_VERSION = 2


def synthesize(text: str, voice: str, cache_dir: Path | None = None) -> Utterance:
    """One utterance (cached by text and voice): flite for bare voice names, espeak-ng for "espeak:...",
    festival for "festival:..."."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = _key(text, voice)
    stem = voice.replace(":", "-").replace("+", "-")
    wav = cache / f"{stem}-{key}.wav"
    labels = cache / f"{stem}-{key}.json"
    cached = json.loads(labels.read_text()) if wav.exists() and labels.exists() else None
    words: tuple[Word, ...] = ()
    # Labels made by an earlier version of this code (other phone names, no word times) are made again.
    if cached is not None and cached.get("version") == LABELS_VERSION:
        phones = tuple(Phone(*p) for p in cached["phones"])
        words = tuple(Word(*w) for w in cached.get("words", ()))
    elif is_espeak(voice) or is_festival(voice):
        make = _espeak if is_espeak(voice) else _festival
        phones, words = make(text, voice.split(":", 1)[1], wav)
        _write_labels(labels, text, voice, phones, words)
    else:
        flite = find_flite()
        # Write to a private name first so that concurrent runs never read a half-written file.
        tmp_wav = wav.with_suffix(f".{os.getpid()}.tmp.wav")
        proc = subprocess.run(
            [flite, "-voice", voice, "-psdur", "-t", text, "-o", str(tmp_wav)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not tmp_wav.exists():
            raise RuntimeError(f"flite failed for voice {voice!r}: {proc.stderr.strip() or proc.returncode}")
        phones = parse_psdur(proc.stdout)
        tmp_wav.replace(wav)
        _write_labels(labels, text, voice, phones, ())
    rate = sf.info(str(wav)).samplerate
    return Utterance(
        uid=f"{voice}:{key[:6]}",
        text=text,
        voice=voice,
        wav_path=wav,
        sample_rate=rate,
        phones=phones,
        words=words,
    )


def _espeak(text: str, voice: str, wav: Path) -> tuple[tuple[Phone, ...], tuple[Word, ...]]:
    """Speak `text` with espeak-ng into `wav`; its phone events are the truth, its word events the
    words' times."""
    from facecast.tts.espeak import EspeakTTS

    speech = EspeakTTS(voice).synthesize_timed(text)
    tmp_wav = wav.with_suffix(f".{os.getpid()}.tmp.wav")
    sf.write(str(tmp_wav), speech.audio, speech.sample_rate, subtype="PCM_16")
    tmp_wav.replace(wav)
    phones = [Phone(p.phone.lower(), p.start, p.end) for p in speech.phones]
    if phones and phones[0].start > 0:  # the first event comes a few ms in: that lead is silence
        phones.insert(0, Phone("sil", 0.0, phones[0].start))
    return tuple(phones), tuple(Word(w.text, w.start, w.end) for w in speech.words)


# Festival reads the script from stdin: select the voice, synthesise, save the wave as it is (no
# rescaling, unlike text2wave) and print each Segment's name and end time, then each Word's name and the
# span of its segments, marked so that nothing else festival prints is read as a phone or a word.
_FESTIVAL_SCRIPT = """(voice_{voice})
(set! utt (utt.synth (Utterance Text "{text}")))
(utt.save.wave utt "{wav}" 'riff)
(mapcar (lambda (seg) (format t "segment %s %f\\n" (item.name seg) (item.feat seg "end")))
        (utt.relation.items utt 'Segment))
(mapcar (lambda (w) (format t "word %s %f %f\\n" (item.name w)
                            (item.feat w "R:SylStructure.daughter1.daughter1.segment_start")
                            (item.feat w "R:SylStructure.daughtern.daughtern.segment_end")))
        (utt.relation.items utt 'Word))
"""


def _scheme_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def parse_festival_segments(output: str) -> tuple[Phone, ...]:
    """Parse the `segment <phone> <end time>` lines of `_FESTIVAL_SCRIPT` (radio phones, lower case)."""
    phones: list[Phone] = []
    start = 0.0
    for line in output.splitlines():
        fields = line.split()
        if len(fields) != 3 or fields[0] != "segment":
            continue
        end = max(start, float(fields[2]))
        phones.append(Phone(fields[1], start, end))
        start = end
    if not phones:
        raise ValueError(f"no segment timings in festival output: {output[:200]!r}")
    return tuple(phones)


def parse_festival_words(output: str) -> tuple[Word, ...]:
    """Parse the `word <text> <start> <end>` lines of `_FESTIVAL_SCRIPT` (words with no span are left out)."""
    words = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0] == "word" and float(fields[3]) > float(fields[2]):
            words.append(Word(fields[1], float(fields[2]), float(fields[3])))
    return tuple(words)


def _festival(text: str, voice: str, wav: Path) -> tuple[tuple[Phone, ...], tuple[Word, ...]]:
    """Speak `text` with festival's `voice` into `wav`; its Segment relation's end times are the truth,
    its Word relation gives the words' times."""
    festival = find_festival_voice(voice)
    tmp_wav = wav.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.wav")
    script = _FESTIVAL_SCRIPT.format(voice=voice, text=_scheme_string(text), wav=_scheme_string(str(tmp_wav)))
    proc = subprocess.run([festival, "--pipe"], input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not tmp_wav.exists():
        tmp_wav.unlink(missing_ok=True)
        raise RuntimeError(f"festival failed for voice {voice!r}: {proc.stderr.strip() or proc.returncode}")
    phones = parse_festival_segments(proc.stdout)
    tmp_wav.replace(wav)
    return phones, parse_festival_words(proc.stdout)


def _write_labels(
    path: Path, text: str, voice: str, phones: tuple[Phone, ...], words: tuple[Word, ...]
) -> None:
    record = {
        "version": LABELS_VERSION,
        "text": text,
        "voice": voice,
        "phones": [[p.phone, p.start, p.end] for p in phones],
        "words": [[w.text, w.start, w.end] for w in words],
    }
    path.write_text(json.dumps(record))


def build_corpus(
    voices: Iterable[str] = VOICES,
    sentences: Sequence[str] = SENTENCES,
    cache_dir: Path | None = None,
) -> list[Utterance]:
    """Every sentence in every voice, generated in parallel on first use and cached after that."""
    voices = tuple(voices)
    if any(synthesiser(v) == "flite" for v in voices):
        find_flite()
    for voice in voices:
        if is_festival(voice):
            find_festival_voice(voice[len(FESTIVAL_PREFIX) :])
    jobs = [(s, v) for v in voices for s in sentences]
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda job: synthesize(job[0], job[1], cache_dir), jobs))
