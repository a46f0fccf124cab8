"""The exchange formats of a labeling project, as pure functions over records.

Reading: a filled ``batch.csv``, any CSV with (path or id, label) columns, and Label Studio's
JSON, JSON_MIN and CSV exports, told apart by their content. Writing: ``batch.csv``, Label
Studio tasks (``label-studio.json``) with the model's suggestion as a prediction, and the
labeling config (an ``Image`` and a ``Choices`` with the project's classes).
Nothing here touches the database or the images.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

from lplgrad.errors import UserError

LOCAL_FILES_PREFIX = "/data/local-files/?d="  # Label Studio's local-files serving
BATCH_COLUMNS = ["id", "path", "label", "suggested_label", "confidence", "score", "rank"]
ID_COLUMNS = ("lplgrad_id", "id", "image_id")
PATH_COLUMNS = ("path", "image", "file", "filename")
LABEL_COLUMNS = ("label", "choice", "class", "category")


@dataclass(frozen=True)
class LabelRecord:
    """One answer found in a file: which image (by lplgrad id, or by path), which label (None: skipped)."""

    image_id: int | None
    path: str | None
    label: str | None
    annotator: str | None = None
    time: str | None = None  # ISO 8601, when the file says; orders several answers for one image
    line: str = ""  # where it came from, for error messages
    source: str = "csv"  # "csv" or "label-studio": what the label's row in the database will say


@dataclass(frozen=True)
class ParsedFile:
    source: str  # "csv" or "label-studio"
    records: list[LabelRecord]


def parse_file(name: str, data: bytes) -> ParsedFile:
    """Any supported file, detected by content: JSON (Label Studio JSON or JSON_MIN) or CSV."""
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first column's name
    except UnicodeDecodeError:
        raise UserError(f"{name} is not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"{name} is empty")
    try:
        if text.lstrip()[:1] in "[{":
            found = ParsedFile("label-studio", parse_label_studio_json(name, text))
        else:
            found = parse_csv(name, text)
        return ParsedFile(found.source, [replace(r, source=found.source) for r in found.records])
    except (AttributeError, TypeError, KeyError, csv.Error) as error:  # a file of an unexpected shape
        raise UserError(
            f"{name} is not a batch.csv, a (path or id, label) CSV or a Label Studio export: {error}"
        ) from None


def parse_label_studio_json(name: str, text: str) -> list[LabelRecord]:
    """Label Studio JSON (tasks with ``annotations``) or JSON_MIN (one flat object per annotation)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{name} is not valid JSON: {error}") from None
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise UserError(f"{name}: expected a list of Label Studio tasks or annotations")
    records = []
    for number, item in enumerate(items, start=1):
        where = f"{name} item {number}"
        if "annotations" in item or "data" in item:
            records += _full_json_task(item, where)
        else:
            records.append(_min_json_record(item, where))
    return records


def _task_reference(data: dict[str, Any], where: str) -> tuple[int | None, str | None]:
    image_id = data.get("lplgrad_id")
    url = data.get("image")
    if image_id is None and not isinstance(url, str):
        raise UserError(f"{where}: a task needs data.lplgrad_id or data.image")
    return _as_id(image_id, where), path_from_url(url) if isinstance(url, str) else None


def _full_json_task(task: dict[str, Any], where: str) -> list[LabelRecord]:
    image_id, path = _task_reference(task.get("data") or {}, where)
    records = []
    for annotation in task.get("annotations") or []:
        label = None
        if not annotation.get("was_cancelled"):
            label = _choice_of(annotation.get("result") or [], where)
        annotator = annotation.get("completed_by")
        records.append(
            LabelRecord(
                image_id,
                path,
                label,
                None if annotator is None else str(annotator),
                annotation.get("updated_at") or annotation.get("created_at"),
                where,
            )
        )
    if not records:  # a task nobody answered counts as skipped
        records.append(LabelRecord(image_id, path, None, line=where))
    return records


def _choice_of(result: list[dict[str, Any]], where: str) -> str | None:
    for region in result:
        choices = (region.get("value") or {}).get("choices")
        if choices:
            if not isinstance(choices, list) or len(choices) != 1:
                raise UserError(f"{where}: one class per image expected, got {choices}")
            return str(choices[0])
    return None


def _min_json_record(item: dict[str, Any], where: str) -> LabelRecord:
    image_id, path = _task_reference(item, where)
    label = next((item[k] for k in LABEL_COLUMNS if item.get(k) not in (None, "")), None)
    if isinstance(label, list):  # several Choices selected
        raise UserError(f"{where}: one class per image expected, got {label}")
    annotator = item.get("annotator")
    return LabelRecord(
        image_id,
        path,
        None if label is None else str(label),
        None if annotator is None else str(annotator),
        item.get("updated_at") or item.get("created_at"),
        where,
    )


def parse_csv(name: str, text: str) -> ParsedFile:
    """A CSV with a label column and an id or a path column; Label Studio's CSV export is one."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    source = "label-studio" if "annotation_id" in columns else "csv"
    # In a Label Studio export "id" is Label Studio's task id: only lplgrad_id names our image.
    id_candidates = ("lplgrad_id",) if source == "label-studio" else ID_COLUMNS
    id_column = next((c for c in id_candidates if c in columns), None)
    path_column = next((c for c in PATH_COLUMNS if c in columns), None)
    label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
    if label_column is None or (id_column is None and path_column is None):
        raise UserError(
            f"{name}: expected a label column ({', '.join(LABEL_COLUMNS)}) and an id or path column; "
            f"found {', '.join(columns) or 'no columns'}"
        )
    records = []
    for number, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(v, str | None)}
        if not any(row.values()):
            continue  # a blank line
        where = f"{name} line {number}"
        image_id = _as_id(row.get(id_column) if id_column else None, where)
        path = row.get(path_column) if path_column else None
        if path and source == "label-studio":
            path = path_from_url(path)
        records.append(
            LabelRecord(
                image_id,
                path or None,
                row.get(label_column) or None,
                row.get("annotator") or None,
                row.get("updated_at") or row.get("created_at") or None,
                where,
            )
        )
    return ParsedFile(source, records)


def _as_id(value: Any, where: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: image id {value!r} is not a number") from None


def path_from_url(url: str) -> str:
    """The image path of a Label Studio URL: local-files ``?d=PATH``, else the URL's path (unquoted)."""
    parsed = urlparse(url)
    if "d" in parse_qs(parsed.query):
        return parse_qs(parsed.query)["d"][0]
    return unquote(parsed.path).lstrip("/") if parsed.scheme or url.startswith("/") else url


# ---- writing


@dataclass(frozen=True)
class BatchItem:
    """One queried image as the person sees it."""

    image_id: int
    path: str  # relative to the images root, as URLs and batch.csv show it
    suggested_label: str | None
    confidence: float | None
    score: float | None
    rank: int


def batch_csv(items: Iterable[BatchItem]) -> str:
    """batch.csv: one row per image, the label column empty for the person to fill."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BATCH_COLUMNS)
    for item in items:
        writer.writerow(
            [
                item.image_id,
                item.path,
                "",
                item.suggested_label or "",
                "" if item.confidence is None else f"{item.confidence:.4f}",
                "" if item.score is None else f"{item.score:.6g}",
                item.rank,
            ]
        )
    return out.getvalue()


def label_studio_tasks(items: Iterable[BatchItem], model_version: str, url_prefix: str = LOCAL_FILES_PREFIX) -> str:
    """Label Studio tasks: ``data.image`` (URL), ``data.lplgrad_id``, and one prediction with the
    suggested class, so the person starts from the model's guess (Label Studio's import format)."""
    tasks = []
    for item in items:
        task: dict[str, Any] = {"data": {"image": url_prefix + quote(item.path), "lplgrad_id": item.image_id}}
        if item.suggested_label is not None:
            task["predictions"] = [
                {
                    "model_version": model_version,
                    "score": item.confidence if item.confidence is not None else 0.0,
                    "result": [
                        {
                            "id": f"p{item.image_id}",
                            "type": "choices",
                            "from_name": "choice",
                            "to_name": "image",
                            "value": {"choices": [item.suggested_label]},
                        }
                    ],
                }
            ]
        tasks.append(task)
    return json.dumps(tasks, indent=1) + "\n"


def label_studio_config(classes: list[str]) -> str:
    """The labeling config to paste into a Label Studio project: one image, one choice among the classes."""
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    return (
        f'<View><Image name="image" value="$image"/><Choices name="choice" toName="image">{choices}</Choices></View>\n'
    )
