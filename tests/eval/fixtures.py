"""Small benchmark files in each published layout, written by the tests (no downloads).

Field names and shapes follow the benchmarks' own releases: MathVista testmini (AI4Math/MathVista on the
Hugging Face hub: pid, question, image, decoded_image, choices, unit, precision, answer, question_type,
answer_type, metadata{task, ...}, query; its GitHub testmini.json is an object pid -> record), MathVerse
testmini (AI4Math/MathVerse: sample_index, problem_index, problem_version, question with the choices
written in, image, answer, question_type "multi-choice"/"free-form", metadata{subject, ...}, query_wo,
query_cot), MathVision (MathLLMs/MathVision: id, question with "<image1>", options, image, decoded_image,
answer, solution, level, subject), LogicVista (GitHub data/dataset.json: id -> {imagename, question,
answer, reasoning, skill, broad_capability}, images in data/images/), ChartQA (HuggingFaceM4/ChartQA:
image, query, label [list], human_or_machine 0/1) and the project's RL records.

Each writer returns the file and ``RESPONSES``-style expectations: the tests pair questions with canned
responses whose verdicts were checked by hand.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 56) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _write_png(path: Path, color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color))


def _parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _meta(task: str) -> dict:
    return {"category": "math-targeted-vqa", "context": "geometry diagram", "grade": "high school", "img_height": 56,
            "img_width": 56, "language": "english", "skills": ["geometry reasoning"], "source": "GeoQA+",
            "split": "testmini", "task": task}


MATHVISTA = [
    # pid, question, choices, answer, question_type, answer_type, precision, task
    ("1", "Find the measure of angle x.", ["145°", "35°", "55°"], "35°", "multi_choice", "text", None,
     "geometry problem solving"),
    ("2", "How many bars have a value above 5?", None, "7", "free_form", "integer", None, "figure question answering"),
    ("3", "What is the length of side AB (in cm)?", None, "1.2", "free_form", "float", 1.0, "geometry problem solving"),
]


def mathvista_rows(embed: bool) -> list[dict]:
    rows = []
    for pid, q, choices, ans, qt, at, prec, task in MATHVISTA:
        row = {"pid": pid, "question": q, "image": f"images/{pid}.png", "choices": choices, "unit": None,
               "precision": prec, "answer": ans, "question_type": qt, "answer_type": at, "metadata": _meta(task),
               "query": f"Hint: ...\nQuestion: {q}"}
        if embed:
            row["decoded_image"] = {"bytes": png_bytes(), "path": f"{pid}.png"}
        rows.append(row)
    return rows


def write_mathvista(root: Path, fmt: str = "parquet") -> Path:
    """Parquet as on the hub (decoded_image bytes), or the GitHub testmini.json (pid -> record, image paths)."""
    if fmt == "parquet":
        return _parquet(root / "mathvista" / "testmini-00000-of-00001.parquet", mathvista_rows(embed=True))
    for pid, *_ in MATHVISTA:
        _write_png(root / "mathvista_gh" / "images" / f"{pid}.png")
    path = root / "mathvista_gh" / "testmini.json"
    path.write_text(json.dumps({r["pid"]: r for r in mathvista_rows(embed=False)}, indent=1))
    return path


MATHVERSE_Q = ("As shown in the figure, AB is parallel to CD and angle 1 = 40°. Find angle 2.\n"
               "Choices:\nA:40°\nB:140°\nC:50°\nD:130°")


def write_mathverse(root: Path) -> Path:
    meta = {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"}
    rows = [
        {"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant", "question": MATHVERSE_Q,
         "image": "images/1.png", "answer": "B", "question_type": "multi-choice", "metadata": meta,
         "query_wo": "...", "query_cot": "..."},
        {"sample_index": "2", "problem_index": "1", "problem_version": "Vision Only", "question": "",
         "image": "images/2.png", "answer": "B", "question_type": "multi-choice", "metadata": meta,
         "query_wo": "...", "query_cot": "..."},
        {"sample_index": "3", "problem_index": "2", "problem_version": "Text Lite",
         "question": "Find the area of the shaded sector.", "image": "images/3.png", "answer": "\\frac{8}{3}\\pi",
         "question_type": "free-form", "metadata": {**meta, "subject": "Solid Geometry"}, "query_wo": "...",
         "query_cot": "..."},
    ]
    for r in rows:
        _write_png(root / "mathverse" / r["image"])
    return _jsonl(root / "mathverse" / "testmini.jsonl", rows)


def write_mathvision(root: Path) -> Path:
    rows = [
        {"id": "7", "question": "<image1>\nWhich shape comes next?", "options": ["circle", "square", "triangle",
         "star", "hexagon"], "image": "images/7.jpg", "decoded_image": {"bytes": png_bytes(), "path": "7.jpg"},
         "answer": "C", "solution": None, "level": 2, "subject": "logic"},
        {"id": "8", "question": "How many cubes are in the tower? <image1>", "options": [], "image": "images/8.jpg",
         "decoded_image": {"bytes": png_bytes((0, 0, 200)), "path": "8.jpg"}, "answer": "12", "solution": None,
         "level": 4, "subject": "solid geometry"},
    ]
    return _parquet(root / "mathvision" / "testmini.parquet", rows)


def write_logicvista(root: Path) -> Path:
    doc = {
        "1": {"imagename": "1.png", "question": "Which figures are symmetric?\nA. the first\nB. the second\n"
              "C. the third\nD. the fourth", "answer": "A, C", "reasoning": "...", "skill": ["spatial"],
              "broad_capability": ["diagram"]},
        "2": {"imagename": "2.png", "question": "What comes next in the sequence?\nA. 8\nB. 16\nC. 32\nD. 64",
              "answer": "B", "reasoning": "...", "skill": ["inductive"], "broad_capability": ["patterns"]},
    }
    for k in doc:
        _write_png(root / "logicvista" / "data" / "images" / f"{k}.png")
    path = root / "logicvista" / "data" / "dataset.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_chartqa(root: Path) -> Path:
    rows = [
        {"image": {"bytes": png_bytes(), "path": None}, "query": "What is the value of the tallest bar?",
         "label": ["62.5"], "human_or_machine": 0},
        {"image": {"bytes": png_bytes((0, 120, 0)), "path": None}, "query": "Which country has the lowest value?",
         "label": ["Peru"], "human_or_machine": 1},
    ]
    return _parquet(root / "chartqa" / "test-00000-of-00001.parquet", rows)


def write_rl(root: Path, name: str = "rl_val.jsonl") -> Path:
    rows = [
        {"problem": "<image>How many red circles are there?", "answer": "3", "images": ["images/r0.png"],
         "id": 0, "task": "count", "difficulty": 1},
        {"problem": "<image>What is the sum of the numbers?", "answer": "17", "images": ["images/r1.png"],
         "id": 1, "task": "digits", "difficulty": 3},
    ]
    for r in rows:
        _write_png(root / "rl" / r["images"][0])
    return _jsonl(root / "rl" / name, rows)
