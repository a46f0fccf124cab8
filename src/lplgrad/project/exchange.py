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
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

from lplgrad.errors import UserError, quoted

LOCAL_FILES_PREFIX = "/data/local-files/?d="  # Label Studio's local-files serving
CHOICES_NAME = "choice"  # the name of the Choices in the labeling config lplgrad writes
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
    except RecursionError:
        raise UserError(f"{name}: JSON nested too deep to be a Label Studio export") from None
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
    """The class chosen in the project's ``Choices`` (named CHOICES_NAME in the config lplgrad writes);
    a result from another config with one ``Choices`` of another name is read too, but with several
    the one that is not ours is never taken."""
    picked = [r for r in result if isinstance(r, dict) and (r.get("value") or {}).get("choices")]
    names = sorted({str(r.get("from_name")) for r in picked})
    ours = [r for r in picked if r.get("from_name") == CHOICES_NAME]
    if not ours and len(names) > 1:
        raise UserError(
            f"{where}: answers from several Choices ({', '.join(names)}) and none named {CHOICES_NAME!r}, "
            "the one in lplgrad's labeling config"
        )
    for region in ours or picked:
        choices = region["value"]["choices"]
        if not isinstance(choices, list) or len(choices) != 1:
            raise UserError(f"{where}: one class per image expected, got {quoted(choices)}")
        return _class_name(choices[0], where)
    return None


def _class_name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: a class name must be text, got {quoted(value)}")
    return unicodedata.normalize("NFC", value.strip())


def _min_json_record(item: dict[str, Any], where: str) -> LabelRecord:
    image_id, path = _task_reference(item, where)
    label = next((item[k] for k in LABEL_COLUMNS if item.get(k) not in (None, "")), None)
    if isinstance(label, list):  # several Choices selected
        raise UserError(f"{where}: one class per image expected, got {quoted(label)}")
    annotator = item.get("annotator")
    return LabelRecord(
        image_id,
        path,
        None if label is None else _class_name(label, where),
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
        # Paths are kept exactly (a file name may begin with a space); other cells are stripped.
        cells = {
            (k or "").strip().lower(): from_spreadsheet(v or "") for k, v in raw.items() if isinstance(v, str | None)
        }
        row = {k: v if k == path_column else v.strip() for k, v in cells.items()}
        if not any(v.strip() for v in row.values()):
            continue  # a blank line
        where = f"{name} line {number}"
        image_id = _as_id(row.get(id_column) if id_column else None, where)
        path = row.get(path_column) if path_column else None
        if path and source == "label-studio":
            path = path_from_url(path)
        label = row.get(label_column) or None
        records.append(
            LabelRecord(
                image_id,
                path or None,
                None if label is None else _class_name(label, where),
                row.get("annotator") or None,
                row.get("updated_at") or row.get("created_at") or None,
                where,
            )
        )
    return ParsedFile(source, records)


def _as_id(value: Any, where: str) -> int | None:
    """An image id: a JSON integer, or a CSV cell of decimal digits; 11.7, true, "1e3" or Infinity are
    refused, never rounded or coerced to another image."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise UserError(f"{where}: image id {quoted(value)} is not a positive integer")
    return value


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
    current_label: str | None = None  # a review batch: the label the image has now, in the label column


def csv_writer(out: io.StringIO) -> Any:
    """RFC 4180 CSV: CRLF line ends, so a field holding a lone CR or LF is quoted (with "\\n" ends
    Python's writer leaves a CR unquoted, and the row splits when it is read back)."""
    return csv.writer(out, lineterminator="\r\n")


# OWASP's CSV injection advice: a cell a spreadsheet would evaluate (it starts with one of these)
# is written with a leading apostrophe, which spreadsheets read as "this is text" and do not show.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """``value`` safe to open in a spreadsheet; ``from_spreadsheet`` reads it back exactly."""
    return "'" + value if value.startswith(FORMULA_STARTS) or value.startswith("'") else value


def from_spreadsheet(value: str) -> str:
    """Undo ``spreadsheet_text`` (an apostrophe before a formula start or another apostrophe)."""
    return value[1:] if value.startswith("'") and value[1:].startswith((*FORMULA_STARTS, "'")) else value


def batch_csv(items: Iterable[BatchItem]) -> str:
    """batch.csv: one row per image, the label column empty for the person to fill (a review batch:
    the current label, for the person to keep or correct)."""
    out = io.StringIO()
    writer = csv_writer(out)
    writer.writerow(BATCH_COLUMNS)
    for item in items:
        writer.writerow(
            [
                item.image_id,
                spreadsheet_text(item.path),
                spreadsheet_text(item.current_label or ""),
                spreadsheet_text(item.suggested_label or ""),
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
                            "from_name": CHOICES_NAME,
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
    controls = f'<Choices name="{CHOICES_NAME}" toName="image">{choices}</Choices>'
    return f'<View><Image name="image" value="$image"/>{controls}</View>\n'
