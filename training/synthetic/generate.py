"""Write the synthetic VL world to disk in the real task formats.

Layout under ``out_dir``::

    world.json                      vocabulary, geometry, seed, sizes, files
    images/<image_id>.png           still scenes (VQA / GQA / COCO pool, NLVR2 pairs)
    videos/<vid_name>/frame_NNN.png frames of each clip, 1 frame per second
    vqa/{train,val,test}.json       Karpathy-split VQA JSON, label from 10 annotators
    vqa/{split}_annotations.json    official-format annotations with the 10 raw answers
    gqa/{split}.json  nlvr2/{split}.json  coco/dataset_coco.json (train + restval, val, test)
    tvqa/{split}.jsonl  how2qa/{split}.jsonl  tvc/{split}.jsonl  yc2c/{split}.jsonl
    subtitles.jsonl                 subtitles of every clip

Each source (``images``, ``nlvr2``, ``videos``) draws from its own generator seeded by
``(seed, source index)``, so the output is a function of the seed and the sizes only; the
videos' extra train clips (``SplitSizes.extra_train``) draw from ``(seed, source index, 1)``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modeling.tasks import TASKS
from training.metrics.vqa import vqa_label
from training.synthetic import image_tasks, video_tasks
from training.synthetic.world import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    Clip,
    Scene,
    WorldConfig,
    render_clip,
    render_scene,
    sample_clip,
    sample_scene,
)

SOURCES = ("images", "nlvr2", "videos")
SPLITS = ("train", "val", "test")
VQA_QUESTIONS_PER_IMAGE = 3
GQA_QUESTIONS_PER_IMAGE = 2
RESTVAL_EVERY = 5
NLVR2_TRIES = 20
SUBTITLES_FILE = "subtitles.jsonl"
WORLD_FILE = "world.json"
# Third seed word of the extra train clips' stream ([seed, source index] seeds a source's own).
EXTRA_TRAIN_STREAM = 1


@dataclass(frozen=True)
class SplitSizes:
    """Scenes per split: images, NLVR2 image pairs or videos.

    ``extra_train`` scenes (videos only) join the train split after the others, drawn after
    val and test from their own random stream: a world with them keeps every scene, row and
    id of the world without them (same val and test, same first ``train`` train scenes).
    """

    train: int
    val: int
    test: int
    extra_train: int = 0

    def __post_init__(self) -> None:
        if min(self.train, self.val, self.test, self.extra_train) < 0:
            raise ValueError(f"split sizes must be >= 0, got {self}")

    def items(self) -> list[tuple[str, int]]:
        """``[("train", n), ("val", n), ("test", n)]``, without ``extra_train``."""
        return [(split, getattr(self, split)) for split in SPLITS]


DEFAULT_SIZES: dict[str, SplitSizes] = {
    "images": SplitSizes(400, 100, 100),
    "nlvr2": SplitSizes(200, 50, 50),
    "videos": SplitSizes(200, 50, 50),
}


def vqa_annotations_path(out_dir: Path, split: str) -> Path:
    """The official-format VQA annotations file of ``split`` under ``out_dir``."""
    return Path(out_dir) / "vqa" / f"{split}_annotations.json"


def subtitles_path(out_dir: Path) -> Path:
    """The subtitles JSONL under ``out_dir``."""
    return Path(out_dir) / SUBTITLES_FILE


class _Vocabulary:
    """Words of the training captions and of every answer, to check coverage."""

    def __init__(self) -> None:
        self.caption_words: set[str] = set()
        self.answer_words: set[str] = set()

    def add_captions(self, split: str, texts: list[str]) -> None:
        """Count the words of ``texts`` when they are training captions."""
        if split == "train":
            self.caption_words.update(word for text in texts for word in text.split())

    def add_answer(self, answer: str) -> None:
        """Note the words of one answer."""
        self.answer_words.update(answer.split())


def _write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _vqa_rows(
    question: image_tasks.Question,
    image_id: str,
    coco_id: int,
    question_id: int,
    rng: np.random.Generator,
) -> tuple[dict, dict]:
    """A Karpathy VQA record and its official annotation, from 10 simulated answers."""
    answers = image_tasks.simulate_annotators(question, rng)
    record = {
        "img_id": image_id, "sent": question.text, "question_id": question_id,
        "label": vqa_label(answers), "answer_type": question.answer_type,
        "question_type": question.question_type,
    }  # fmt: skip
    annotation = {
        "question_id": question_id, "image_id": coco_id,
        "question_type": question.question_type, "answer_type": question.answer_type,
        "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
        "answers": [
            {"answer": answer, "answer_confidence": "yes", "answer_id": index + 1}
            for index, answer in enumerate(answers)
        ],
    }  # fmt: skip
    return record, annotation


def _gqa_rows(
    scene: Scene, image_id: str, split: str, first_id: int, rng: np.random.Generator
) -> list[dict]:
    """Distinct GQA-style relational questions about one scene (none for a single shape)."""
    questions: dict[str, image_tasks.Question] = {}
    for _ in range(GQA_QUESTIONS_PER_IMAGE):
        question = image_tasks.gqa_question(scene, rng)
        if question is not None:
            questions.setdefault(question.text, question)
    return [
        {
            "img_id": image_id,
            "sent": question.text,
            "question_id": f"{split}{first_id + offset:07d}",
            "label": {question.answer: 1.0},
            "question_type": question.question_type,
        }
        for offset, question in enumerate(questions.values())
    ]


def _coco_image(image_id: str, coco_id: int, references: list[str], coco_split: str) -> dict:
    """One ``images`` entry of Karpathy's ``dataset_coco.json``."""
    sentences = [
        {"raw": text, "tokens": text.split(), "imgid": coco_id, "sentid": coco_id * 10 + k}
        for k, text in enumerate(references)
    ]
    return {
        "filepath": "images", "filename": f"{image_id}.png", "imgid": coco_id, "cocoid": coco_id,
        "split": coco_split, "sentences": sentences,
    }  # fmt: skip


def _write_image_tasks(
    out: Path, rng: np.random.Generator, sizes: SplitSizes, config: WorldConfig, vocab: _Vocabulary
) -> dict[str, dict[str, Path]]:
    """Scenes shared by VQA, GQA and COCO captions (as COCO images are by VQAv2)."""
    coco_images: list[dict] = []
    coco_id = 0
    paths: dict[str, dict[str, Path]] = {"vqa": {}, "gqa": {}, "caption": {}}
    for split, n_images in sizes.items():
        vqa_records, vqa_annotations, gqa_records = [], [], []
        for index in range(n_images):
            coco_id += 1
            scene = sample_scene(rng, config)
            image_id = f"synth_{split}_{index:05d}"
            render_scene(scene, rng, config).save(out / "images" / f"{image_id}.png")
            for number, question in enumerate(
                image_tasks.vqa_questions(scene, rng, VQA_QUESTIONS_PER_IMAGE)
            ):
                record, annotation = _vqa_rows(
                    question, image_id, coco_id, coco_id * 1000 + number, rng
                )
                vqa_records.append(record)
                vqa_annotations.append(annotation)
                vocab.add_answer(question.answer)
            gqa_records += _gqa_rows(scene, image_id, split, len(gqa_records), rng)
            references = image_tasks.captions(scene, rng)
            vocab.add_captions(split, references)
            restval = split == "train" and index % RESTVAL_EVERY == RESTVAL_EVERY - 1
            coco_split = "restval" if restval else split
            coco_images.append(_coco_image(image_id, coco_id, references, coco_split))
        vocab.answer_words.update(word for row in gqa_records for word in row["label"])
        paths["vqa"][split] = out / "vqa" / f"{split}.json"
        paths["gqa"][split] = out / "gqa" / f"{split}.json"
        _write_json(paths["vqa"][split], vqa_records)
        _write_json(vqa_annotations_path(out, split), {"annotations": vqa_annotations})
        _write_json(paths["gqa"][split], gqa_records)
    coco_path = out / "coco" / "dataset_coco.json"
    _write_json(coco_path, {"dataset": "coco", "images": coco_images})
    paths["caption"] = dict.fromkeys(SPLITS, coco_path)
    return paths


def _write_nlvr2(
    out: Path, rng: np.random.Generator, sizes: SplitSizes, config: WorldConfig, vocab: _Vocabulary
) -> dict[str, Path]:
    """NLVR2 pairs; the label is drawn first so true and false are balanced."""
    paths = {}
    for split, n_pairs in sizes.items():
        records = []
        for index in range(n_pairs):
            scenes = (sample_scene(rng, config), sample_scene(rng, config))
            wanted = int(rng.integers(2))
            for _ in range(NLVR2_TRIES):
                statement, label = image_tasks.nlvr2_statement(*scenes, rng)
                if label == wanted:
                    break
            image_ids = [f"nlvr2-{split}-{index}-0-img{side}" for side in (0, 1)]
            for scene, image_id in zip(scenes, image_ids, strict=True):
                render_scene(scene, rng, config).save(out / "images" / f"{image_id}.png")
            records.append({
                "identifier": f"{split}-{index}-0-0", "img0": image_ids[0], "img1": image_ids[1],
                "label": label, "sent": statement, "uid": f"nlvr2_{split}_{index}",
            })  # fmt: skip
            vocab.add_answer("true" if label else "false")
        paths[split] = out / "nlvr2" / f"{split}.json"
        _write_json(paths[split], records)
    return paths


def _video_qa_row(
    clip_name: str,
    question_id: int,
    question: tuple[str, list[str], int],
    config: WorldConfig,
    question_type: str,
) -> dict:
    text, options, answer_index = question
    row: dict = {"vid_name": clip_name, "qid": question_id, "q": text}
    row.update({f"a{index}": option for index, option in enumerate(options)})
    row.update({
        "answer_idx": answer_index, "ts": f"0.00-{config.n_frames:.2f}",
        "show_name": "synthetic", "question_type": question_type,
    })  # fmt: skip
    return row


def _caption_row(
    clip_name: str, clip_id: int, descriptions: list[str], config: WorldConfig
) -> dict:
    return {
        "vid_name": clip_name, "clip_id": clip_id, "ts": [0.0, float(config.n_frames)],
        "duration": float(config.n_frames),
        "descs": [{"desc": desc, "type": "v", "desc_id": k} for k, desc in enumerate(descriptions)],
    }  # fmt: skip


def _video_segments(
    sizes: SplitSizes, rng: np.random.Generator, extra_rng: np.random.Generator
) -> list[tuple[str, int, int, np.random.Generator]]:
    """``(split, first clip index, clips, stream)`` in drawing order: train, val and test
    from the videos' stream, then ``extra_train`` more train clips from their own, so the
    extra clips change nothing drawn before them."""
    segments = [(split, 0, n_clips, rng) for split, n_clips in sizes.items()]
    return segments + [("train", sizes.train, sizes.extra_train, extra_rng)]


def _write_clip(
    out: Path, clip_name: str, rng: np.random.Generator, config: WorldConfig
) -> tuple[Clip, dict]:
    """Draw and render one clip; -> (clip, its subtitles row)."""
    clip = sample_clip(rng, config)
    (out / "videos" / clip_name).mkdir(parents=True, exist_ok=True)
    for frame_index, frame in enumerate(render_clip(clip, rng, config)):
        frame.save(out / "videos" / clip_name / f"frame_{frame_index:03d}.png")
    lines = video_tasks.subtitle_lines(clip, rng)
    timed = [{"text": text, "start": 2.0 * k, "end": 2.0 * k + 2.0} for k, text in enumerate(lines)]
    return clip, {"vid_name": clip_name, "sub": timed}


def _write_video_tasks(
    out: Path,
    rngs: tuple[np.random.Generator, np.random.Generator],
    sizes: SplitSizes,
    config: WorldConfig,
    vocab: _Vocabulary,
) -> dict[str, dict[str, Path]]:
    """Clips shared by TVQA, How2QA, TVC and YouCook2 captions, and one subtitles file;
    `rngs`: the videos' stream and the extra train clips' stream (`_video_segments`)."""
    subtitles: list[dict] = []
    tasks = ("tvqa", "how2qa", "tvc", "yc2c")
    rows: dict[str, dict[str, list[dict]]] = {split: {t: [] for t in tasks} for split in SPLITS}
    clip_number = 0
    for split, first, n_clips, rng in _video_segments(sizes, *rngs):
        for index in range(first, first + n_clips):
            clip_number += 1
            clip_name = f"clip_{split}_{index:05d}"
            clip, subtitle_row = _write_clip(out, clip_name, rng, config)
            subtitles.append(subtitle_row)
            tvqa = video_tasks.tvqa_question(clip, rng)
            how2qa = video_tasks.how2qa_question(clip, rng)
            # Question type: the asked shape's motion, so results split per direction.
            rows[split]["tvqa"].append(_video_qa_row(clip_name, clip_number, tvqa, config,
                                                     tvqa[1][tvqa[2]]))
            if how2qa is not None:
                rows[split]["how2qa"].append(_video_qa_row(
                    clip_name, clip_number, how2qa, config,
                    video_tasks.phrase_direction(how2qa[1][how2qa[2]])))
            for task, descriptions in (
                ("tvc", video_tasks.tvc_descriptions(clip)),
                ("yc2c", video_tasks.yc2c_descriptions(clip)),
            ):
                rows[split][task].append(_caption_row(clip_name, clip_number, descriptions,
                                                      config))
                vocab.add_captions(split, descriptions)
    paths: dict[str, dict[str, Path]] = {task: {} for task in tasks}
    for split, split_rows in rows.items():
        for task, task_rows in split_rows.items():
            paths[task][split] = out / task / f"{split}.jsonl"
            _write_jsonl(paths[task][split], task_rows)
    _write_jsonl(subtitles_path(out), subtitles)
    return paths


def _resolve_sizes(sizes: SplitSizes | Mapping[str, SplitSizes] | None) -> dict[str, SplitSizes]:
    if sizes is None:
        return dict(DEFAULT_SIZES)
    if isinstance(sizes, SplitSizes):
        sizes = dict.fromkeys(SOURCES, sizes)
    unknown = set(sizes) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown size keys {sorted(unknown)}; known: {', '.join(SOURCES)}")
    resolved = {source: sizes.get(source, DEFAULT_SIZES[source]) for source in SOURCES}
    extra = [source for source in SOURCES if source != "videos" and resolved[source].extra_train]
    if extra:
        raise ValueError(f"sizes[{extra[0]!r}].extra_train: only 'videos' takes extra train "
                         f"scenes, got {resolved[extra[0]].extra_train}")
    return resolved


def _world_description(
    out: Path,
    seed: int,
    sizes: dict[str, SplitSizes],
    config: WorldConfig,
    vocab: _Vocabulary,
    paths: dict[str, dict[str, Path]],
) -> dict:
    return {
        "seed": seed,
        "sizes": {source: asdict(split_sizes) for source, split_sizes in sizes.items()},
        "geometry": asdict(config),
        "colours": list(COLOURS), "shapes": list(SHAPES),
        "relations": list(image_tasks.RELATIONS), "directions": list(DIRECTIONS),
        "question_types": {
            "vqa": ["colour", "shape", "count", "exist"], "gqa": ["relation"],
            "tvqa": list(DIRECTIONS),  # the asked shape's motion
            "how2qa": list(video_tasks.HOW2QA_DIRECTIONS),
        },
        "caption_vocabulary": sorted(vocab.caption_words),
        "answer_vocabulary": sorted(vocab.answer_words),
        "answer_words_missing_from_captions": sorted(vocab.answer_words - vocab.caption_words),
        "multiple_choice_targets": "a0 .. a4 (TVQA) and a0 .. a3 (How2QA): option labels, "
        "which the encoder text lists; they are not caption words",
        "files": {
            task: {split: str(path.relative_to(out)) for split, path in split_paths.items()}
            for task, split_paths in paths.items()
        } | {"subtitles": SUBTITLES_FILE, "vqa_annotations": "vqa/{split}_annotations.json"},
    }  # fmt: skip


def generate(
    out_dir: str | Path,
    seed: int = 0,
    sizes: SplitSizes | Mapping[str, SplitSizes] | None = None,
    config: WorldConfig | None = None,
) -> dict[str, dict[str, Path]]:
    """Write the synthetic world under ``out_dir`` (see the module docstring for the layout).

    Args:
        out_dir: folder to write into (created); files of the same name are overwritten,
            others (say, from an earlier run with larger sizes) are left in place.
        seed: the only source of randomness: same seed and sizes, same bytes.
        sizes: scenes per split for every source (one ``SplitSizes``) or per source
            (``{"images": ..., "nlvr2": ..., "videos": ...}``); defaults ``DEFAULT_SIZES``.
            ``extra_train`` (videos only) adds train clips without changing the others.
        config: image and video geometry.

    Returns:
        task -> split -> data file (``caption`` maps every split to ``dataset_coco.json``).
    """
    out = Path(out_dir)
    for folder in ("images", "videos"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    resolved = _resolve_sizes(sizes)
    config = config or WorldConfig()
    vocab = _Vocabulary()
    rngs = {source: np.random.default_rng([seed, index]) for index, source in enumerate(SOURCES)}
    extra_rng = np.random.default_rng([seed, SOURCES.index("videos"), EXTRA_TRAIN_STREAM])
    paths = _write_image_tasks(out, rngs["images"], resolved["images"], config, vocab)
    paths["nlvr2"] = _write_nlvr2(out, rngs["nlvr2"], resolved["nlvr2"], config, vocab)
    paths.update(_write_video_tasks(out, (rngs["videos"], extra_rng), resolved["videos"],
                                    config, vocab))
    ordered = {task: paths[task] for task in TASKS}
    world = _world_description(out, seed, resolved, config, vocab, ordered)
    _write_json(out / WORLD_FILE, world)
    return ordered
