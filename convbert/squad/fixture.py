"""Writes the small SQuAD-format fixture of the tests and the tiny demo, deterministically:

    python -m convbert.squad.fixture [--output_dir=tests/fixtures/squad]

Passages are runs of consecutive speeches from the bundled plays (`data/demo_corpus`), one `NAME. text` line per
speech. Questions: `Who speaks first?`, `Who speaks last?`, and `Who says "..."?` quoting the opening words of a
speech; the answer is always a speaker's name (its offset in the passage). v2.0 adds unanswerable questions
quoting a speech of another passage. Every passage has at least 3 speakers; some are long enough to need several
windows at the tiny config's 128 tokens, and one hand-written paragraph has non-ASCII names and text. Train and
dev come from disjoint passages.
"""

from __future__ import annotations

import json
import os
import random
import re

from absl import app, flags

PLAYS = ("macbeth", "othello", "tempest", "twelfth_night", "much_ado_about_nothing", "julius_caesar")
SPEAKER = re.compile(r"^([A-Z][A-Z' ]*[A-Z])\.$")
QUOTED_WORDS = 4
PASSAGE_SPEECHES = (3, 4, 4, 5, 9)  # drawn per passage; 9 speeches usually exceed one 128-token window
SIZES = {"train": 150, "dev": 40}  # passages per split
QUOTES = 1  # `Who says` questions per passage (and unanswerable ones for v2)
MIN_SPEAKERS = 3  # distinct speakers per passage, so that no fixed position answers most questions
NON_ASCII = {  # a hand-written paragraph: accents, a ligature, CJK, typographic punctuation
    "title": "Non-ASCII",
    "context": "ZOË. Où est le café, señor — près de la Straße?\n"
    "MÜLLER. Ich wohne in Tōkyō, nahe 東京駅.\nRENÉE. Cœur naïve, « déjà vu » encore!",
    "questions": (
        ('Who says "Où est le café"?', "ZOË"),
        ('Who says "Ich wohne in Tōkyō"?', "MÜLLER"),
        ('Who says "Cœur naïve"?', "RENÉE"),
    ),
}


def speeches(path: str) -> list[list[tuple[str, str]]]:
    """Runs of (speaker, one-line text) between stage directions and headings, from a play file."""
    runs, run, speaker, lines = [], [], None, []

    def close():
        nonlocal speaker, lines
        if speaker and lines:
            run.append((speaker, " ".join(lines)))
        speaker, lines = None, []

    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            match = SPEAKER.match(line)
            if match and not line.startswith(("ACT ", "SCENE ")):
                close()
                speaker = match.group(1)
            elif not line:
                close()
            elif line.startswith(("[", "ACT ", "SCENE ")):
                close()
                if run:
                    runs.append(run)
                    run = []
            elif speaker:
                lines.append(line)
    close()
    return [r for r in runs + [run] if r]


def passages(corpus_dir: str, rng: random.Random) -> list[list[tuple[str, str]]]:
    """Passages of consecutive speeches of 3-40 words by at least `MIN_SPEAKERS` speakers, in play order."""
    out = []
    for play in PLAYS:
        for run in speeches(os.path.join(corpus_dir, f"{play}.txt")):
            run = [(s, t) for s, t in run if 3 <= len(t.split()) <= 40]
            i = 0
            while i < len(run):
                k = rng.choice(PASSAGE_SPEECHES)
                if i + k <= len(run) and len({s for s, _ in run[i : i + k]}) >= MIN_SPEAKERS:
                    out.append(run[i : i + k])
                i += k
    return out


def opening(text: str) -> str:
    return " ".join(text.split()[:QUOTED_WORDS])


def paragraph(
    passage: list[tuple[str, str]], pid: str, version: str, rng: random.Random, other_openings: list[str]
) -> dict:
    """One SQuAD paragraph: the first and last speaker, `QUOTES` speeches whose opening is unique in the passage
    (+ `QUOTES` unanswerable questions for v2, quoting other passages)."""
    lines, starts = [], []
    for speaker, text in passage:
        starts.append(sum(len(x) + 1 for x in lines))
        lines.append(f"{speaker}. {text}")
    context = "\n".join(lines)
    (first, _), (last, _) = passage[0], passage[-1]
    qas = [
        {"id": f"{pid}f", "question": "Who speaks first?", "answers": [{"text": first, "answer_start": 0}]},
        {"id": f"{pid}l", "question": "Who speaks last?", "answers": [{"text": last, "answer_start": starts[-1]}]},
    ]
    unique = [i for i, (_, text) in enumerate(passage) if context.count(opening(text)) == 1]
    for i in sorted(rng.sample(unique, min(QUOTES, len(unique)))):
        qas.append(
            {
                "id": f"{pid}q{i}",
                "question": f'Who says "{opening(passage[i][1])}"?',
                "answers": [{"text": passage[i][0], "answer_start": starts[i]}],
            }
        )
    if version == "v2":
        for q in qas:
            q["is_impossible"] = False
        for i, quote in enumerate(rng.sample(other_openings, QUOTES)):
            if quote not in context:
                qas.append(
                    {"id": f"{pid}n{i}", "question": f'Who says "{quote}"?', "answers": [], "is_impossible": True}
                )
    return {"context": context, "qas": qas}


def non_ascii_paragraph(version: str, split: str) -> dict:
    context, qas = NON_ASCII["context"], []
    for i, (question, name) in enumerate(NON_ASCII["questions"]):
        qa = {
            "id": f"{split}-nonascii-q{i}",
            "question": question,
            "answers": [{"text": name, "answer_start": context.index(name)}],
        }
        qas.append({**qa, "is_impossible": False} if version == "v2" else qa)
    return {"context": context, "qas": qas}


def build(corpus_dir: str, version: str) -> dict[str, dict]:
    """{'train': dataset, 'dev': dataset} in the official JSON format."""
    rng = random.Random(0)
    pool = passages(corpus_dir, rng)
    rng.shuffle(pool)
    out, used = {}, 0
    for split, n in SIZES.items():
        chosen, used = pool[used : used + n], used + n
        openings = [opening(t) for p in chosen for _, t in p]
        paragraphs = [paragraph(p, f"{split}{i}", version, rng, openings) for i, p in enumerate(chosen)]
        out[split] = {
            "version": {"v1": "1.1", "v2": "v2.0"}[version],
            "data": [
                {"title": "Shakespeare", "paragraphs": paragraphs},
                {"title": NON_ASCII["title"], "paragraphs": [non_ascii_paragraph(version, split)]},
            ],
        }
    return out


def write(output_dir: str, corpus_dir: str = "data/demo_corpus") -> list[str]:
    from convbert.squad.data import FILES

    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for version, files in FILES.items():
        for split, dataset in build(corpus_dir, version).items():
            paths.append(os.path.join(output_dir, files[split]))
            with open(paths[-1], "w", encoding="utf-8") as f:
                json.dump(dataset, f, ensure_ascii=False, indent=1)
                f.write("\n")
    return paths


flags.DEFINE_string("output_dir", "tests/fixtures/squad", "Where the four JSON files go.")
flags.DEFINE_string("corpus_dir", "data/demo_corpus", "The bundled plays.")


def main(argv):
    del argv
    for path in write(flags.FLAGS.output_dir, flags.FLAGS.corpus_dir):
        print(path)


if __name__ == "__main__":
    app.run(main)
