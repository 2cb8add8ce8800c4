"""What a node's label says, as the people who draw these DAGs write it.

Labels are free text; each function here reads one convention (`GPU: 0-7`, `Layer 3`,
`Input: [batch_size=8, seq_len=128]`) and returns None when the text does not use it.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

ALL_DEVICES = frozenset({-1})  # "GPU: all" — every device, count unknown

_ESCAPES = re.compile(r"\\([nlrNG])")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]*>")


def label_lines(raw: str, *, node_id: str, graph_name: str, html_label: bool) -> list[str]:
    """The label as the reader sees it: escapes expanded, tags dropped, one entry per line."""
    def expand(match: re.Match) -> str:
        code = match.group(1)
        return {"N": node_id, "G": graph_name}.get(code, "\n")

    text = _ESCAPES.sub(expand, raw)
    text = _BREAK.sub("\n", text)  # also written, unrendered, inside quoted labels
    if html_label:
        text = html.unescape(_TAG.sub("", text))
    return [line.strip() for line in text.splitlines() if line.strip()]


# --- devices -----------------------------------------------------------------------------

_DEVICE_WORD = r"(?:gpus?|devices?)"
# "GPU: 0-7 → 8-15" is a transfer: the devices at both ends.
_LABEL_DEVICE = re.compile(
    rf"(?<![a-z]){_DEVICE_WORD}[\s:=#_]*(?:gpu_?)?(all\b|\d+(?:\s*(?:->|→|-|–|,)\s*\d+)*)",
    re.IGNORECASE)
_COUNT_BEFORE = re.compile(r"\d\s*$")
# A device in an id: `gpu3`, `device_0`, `dev2`, `rank_5`.
_ID_DEVICE_WORD = r"(gpu|device|dev|rank)_?(\d+)"
_ID_DEVICE = re.compile(rf"(?:^|[^a-z]){_ID_DEVICE_WORD}(?![0-9])", re.IGNORECASE)
_ID_DEVICES = re.compile(_ID_DEVICE_WORD, re.IGNORECASE)
_TITLE_DEVICE = re.compile(r"(?<![a-z])(?:gpu|device|rank)\s*_?\d+", re.IGNORECASE)
_RANGE = re.compile(r"(\d+)\s*(?:-|–)\s*(\d+)|(\d+)")
# A device or layer range wider than this is some other number in a label, not a range: the
# reader never materialises millions of devices or layers from one hostile label.
WIDEST_RANGE = 4096


def parse_device_spec(spec: str) -> frozenset[int] | None:
    if spec.lower().startswith("all"):
        return ALL_DEVICES
    devices: set[int] = set()
    for match in _RANGE.finditer(re.sub(r"->|→", ",", spec)):
        if match.group(3) is not None:
            devices.add(int(match.group(3)))
            continue
        first, last = int(match.group(1)), int(match.group(2))
        if last < first or last - first > WIDEST_RANGE:
            return None
        devices.update(range(first, last + 1))
    return frozenset(devices) or None


def devices_in_text(text: str) -> frozenset[int] | None:
    """Devices named by the first `GPU: ...` / `GPUs 0-3` / `Device 2` mention in text."""
    for match in _LABEL_DEVICE.finditer(text):
        if _COUNT_BEFORE.search(text, 0, match.start()):
            continue  # "16 GPUs 4 heads": a count of GPUs, not GPU 4
        devices = parse_device_spec(match.group(1))
        if devices is not None:
            return devices
    return None


def device_in_id(node_id: str) -> int | None:
    match = _ID_DEVICE.search(node_id)
    return int(match.group(2)) if match else None


def op_key(node_id: str) -> str:
    """The id without its device numbers: `layer_0_fc1_gpu3` -> `layer_0_fc1_gpu`."""
    return _ID_DEVICES.sub(lambda match: match.group(1), node_id).lower()


def id_family(node_id: str) -> str:
    """The id with every number blanked: `gpu8_available` and `gpu9_available` are one family."""
    return re.sub(r"\d+", "#", node_id.lower())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: inserts, deletes and substitutions of one character."""
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def op_title(title: str) -> str:
    """The title without its device: "Q Projection GPU0" -> "q projection"."""
    return _TITLE_DEVICE.sub("", title).strip(" :-_").lower()


# A tensor-parallel degree stated in a label: "TP4", "TP=8", "tp 8", "(TP4)", "4 TP", "4-way TP";
# not "TP:0" or "TP Rank 1", which name a rank.
_TP_DEGREE = re.compile(
    r"(?<![a-z])tp\s*=?\s*(\d+)(?!\d)|(?<![\d.:=])(\d+)[\s-]*(?:way\s+)?tp(?![a-z\d])", re.IGNORECASE)


def tp_degrees_in_text(text: str) -> set[int]:
    return {degree for match in _TP_DEGREE.finditer(text)
            if (degree := int(match.group(1) or match.group(2))) >= 1}


# --- layers ------------------------------------------------------------------------------

_ID_LAYER = re.compile(r"(?:^|_)(?:layer_?|l)(\d+)(?=_|$)", re.IGNORECASE)
_ID_LAYER_RANGE = re.compile(r"(?:^|_)layers_?(\d+)_(\d+)(?=_|$)", re.IGNORECASE)
_TEXT_LAYER = re.compile(r"(?<![a-z])(?:layer\s*(\d+)(?![\d-])|l(\d+)-)", re.IGNORECASE)
_TEXT_LAYER_RANGE = re.compile(r"(?<![a-z])layers?\s*(\d+)\s*(?:-|–|to)\s*(\d+)", re.IGNORECASE)


# An edge label saying layers are left out between its ends ("... 124 layers ...").
ELIDED_LAYERS = re.compile(r"\.\.\.|…|\d+\s+(?:more\s+)?layers", re.IGNORECASE)


def layer_in_id(node_id: str) -> int | None:
    match = _ID_LAYER.search(node_id)
    return int(match.group(1)) if match else None


def layer_range_in_id(node_id: str) -> tuple[int, int] | None:
    match = _ID_LAYER_RANGE.search(node_id)
    return _ordered(match) if match else None


def layer_in_text(text: str) -> int | None:
    match = _TEXT_LAYER.search(text)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def layer_range_in_text(text: str) -> tuple[int, int] | None:
    match = _TEXT_LAYER_RANGE.search(text)
    return _ordered(match) if match else None


def _ordered(match: re.Match) -> tuple[int, int] | None:
    first, last = int(match.group(1)), int(match.group(2))
    return (first, last) if 0 <= last - first <= WIDEST_RANGE else None


# --- tensor dimensions -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Shape:
    """One bracketed shape, e.g. `[batch_size=8, seq_len=128, 1024]`."""

    dims: tuple[tuple[str, str], ...]  # (name, value); either may be ""
    text: str

    @property
    def numel(self) -> int | None:
        values = [value for _, value in self.dims]
        if not values or not all(v.isdigit() for v in values):
            return None
        return math.prod(int(v) for v in values)

    def agrees_with(self, other: Shape) -> bool:
        """Same element count where both are numeric (a reshape is fine). Otherwise a symbolic
        dimension (`tokens_per_expert`, `T0`) stands for any size: the shapes disagree only
        where two numbers at the same place differ."""
        if self.numel is not None and other.numel is not None:
            return self.numel == other.numel
        if len(self.dims) != len(other.dims):
            return True
        return all(not (mine and theirs) or mine == theirs
                   for (_, mine), (_, theirs) in zip(self.dims, other.dims, strict=False))


_DIMS_FIELD = re.compile(r"(?<![a-z])(input|output|in|out)\s*\d*\s*:\s*", re.IGNORECASE)
_SHAPE = re.compile(r"(?:(\d+)\s*[×x*]\s*)?\[([^\[\]]*)\](?:\s*[×x*]\s*(\d+))?")
# `[8, 128, 1024] -> [8, 128, 4096]`: a line that is only input shapes (`[..] + [..]` for two)
# and an output shape; the arrow may also start the next line (`[8, 128, 1024]` / `→ [8, 2]`).
_ONE_SHAPE = r"\s*\d*\s*[×x]?\s*\[[^\[\]]*\]"
_SHAPES_ONLY = rf"{_ONE_SHAPE}(?:\s*[+,]\s*{_ONE_SHAPE})*"
_ARROW = re.compile(rf"^({_SHAPES_ONLY})\s*(?:->|→)\s*({_ONE_SHAPE}.*)$")
_SHAPES_LINE = re.compile(rf"^({_SHAPES_ONLY})\s*$")
_ARROW_START = re.compile(rf"^\s*(?:->|→)\s*({_ONE_SHAPE}.*)$")
_DIM_ITEM = re.compile(r"^([a-z_][\w]*)?\s*(?:=\s*)?(\d+(?:\*\d+)*)?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Dims:
    """The `Input:` and `Output:` shapes a label states; several when it lists several."""

    inputs: tuple[Shape, ...]
    outputs: tuple[Shape, ...]


def parse_shape(body: str) -> Shape | None:
    items = [item for item in re.split(r"[,×\s]+", re.sub(r"\s*=\s*", "=", body)) if item]
    dims = []
    for item in items:
        match = _DIM_ITEM.match(item)
        if match is None or not (match.group(1) or match.group(2)):
            return None
        value = match.group(2) or ""
        if "*" in value:  # `32*128`: a dimension written as a product
            value = str(math.prod(int(part) for part in value.split("*")))
        dims.append((match.group(1) or "", value))
    return Shape(tuple(dims), f"[{body.strip()}]") if dims else None


def dims_in_lines(lines: list[str]) -> Dims | None:
    inputs: list[Shape] = []
    outputs: list[Shape] = []
    for index, line in enumerate(lines):
        arrow = _ARROW.match(line)
        if arrow:
            inputs.extend(_shapes(arrow.group(1)))
            outputs.extend(_shapes(arrow.group(2)))
            continue
        after = _ARROW_START.match(line)
        if after:
            before = _SHAPES_LINE.match(lines[index - 1]) if index else None
            if before:
                inputs.extend(_shapes(before.group(1)))
                outputs.extend(_shapes(after.group(1)))
            continue
        fields = list(_DIMS_FIELD.finditer(line))
        for index, field in enumerate(fields):
            end = fields[index + 1].start() if index + 1 < len(fields) else len(line)
            shapes = _shapes(line[field.end():end])
            target = inputs if field.group(1).lower().startswith("in") else outputs
            target.extend(shapes)
    if not inputs and not outputs:
        return None
    return Dims(tuple(inputs), tuple(outputs))


def _shapes(text: str) -> list[Shape]:
    shapes = []
    for match in _SHAPE.finditer(text):
        shape = parse_shape(match.group(2))
        if shape is not None:
            shapes.append(shape)
    return shapes
