"""What agfprune's own files must look like, checked in one place before anything acts on them.

Every file agfprune writes (checkpoint metadata, calibration, scores, finetune state, router) starts
with a `format` name and an integer version; readers check both with `check_header`, then each field
they use through `Fields`, so that a damaged or hand-edited file is refused with one ModelError
(exit 4) that names the field, instead of a TypeError somewhere later (exit 1, "a bug").

Input files are opened only when they are regular files (`require_regular_file`): opening a named
pipe blocks until someone writes to it. YAML is read without aliases (`load_yaml`), so a few hundred
bytes cannot expand into billions of nodes.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agfprune.core.errors import AgfpruneError, ModelError

# Text artefacts (scores.json, router.yaml, --config) larger than this are not ours.
MAX_TEXT_BYTES = 256 << 20
# Largest image side and channel count a model or a recorded input size may have.
MAX_IMAGE_SIDE = 4096
MAX_CHANNELS = 64
# Largest model agfprune builds from recorded metadata (parameters): 8 GB of float32 weights.
MAX_PARAMS = 2_000_000_000

ErrorType = type[AgfpruneError]


# ---- input files -----------------------------------------------------------------------------------

def require_regular_file(path: str | os.PathLike[str], what: str = "file", error: ErrorType = ModelError) -> Path:
    """`path` if it is a regular file (or a symlink to one); else `error` saying what it is instead.

    Checked before opening: open() on a FIFO waits forever for a writer."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:  # permission, symlink loop, name too long...
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} is a folder, expected a file: {path}")
    if not stat.S_ISREG(mode):
        raise error(f"{path}: {what} is not a regular file (a named pipe, device or socket)")
    return path


def read_text(path: str | os.PathLike[str], what: str = "file", error: ErrorType = ModelError,
              limit: int = MAX_TEXT_BYTES) -> str:
    """UTF-8 text of a regular file of at most `limit` bytes, with one-line errors."""
    path = require_regular_file(path, what, error)
    try:
        if path.stat().st_size > limit:
            raise error(f"{path}: {what} is larger than {limit >> 20} MiB; not an agfprune file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: {what} is not UTF-8 text") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def utf8_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """A name for `path` that libraries which insist on UTF-8 paths (safetensors) accept.

    A file name that is not UTF-8 (bytes that Python keeps as surrogates) is opened here and handed
    on as /proc/self/fd/N, so that exactly that file is read, never a lossily re-encoded name."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield text
        return
    descriptor = os.open(text, os.O_RDONLY)
    try:
        alias = f"/proc/self/fd/{descriptor}"
        if not os.path.exists(alias):  # no /proc (not Linux): nothing portable to offer
            raise OSError(f"file name {text!r} is not UTF-8")
        yield alias
    finally:
        os.close(descriptor)


# ---- YAML without aliases --------------------------------------------------------------------------

def _no_alias_loader() -> type:
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """SafeLoader that refuses `*alias` references: agfprune's YAML never needs them, and nested
        aliases expand exponentially (the "billion laughs" document)."""

        def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
            if self.check_event(yaml.events.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted", mark)
            return super().compose_node(parent, index)

    return NoAliasLoader


def load_yaml(text: str) -> Any:
    """Parse YAML with the safe loader, refusing aliases (raises yaml.YAMLError)."""
    import yaml

    return yaml.load(text, Loader=_no_alias_loader())  # noqa: S506 - a SafeLoader subclass


def dump_yaml(document: Any) -> str:
    """YAML that load_yaml reads back: no anchors or aliases, even for repeated objects."""
    import yaml

    class NoAliasDumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(document, Dumper=NoAliasDumper, sort_keys=False, default_flow_style=False)


# ---- headers and fields ----------------------------------------------------------------------------

def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


def check_header(document: Any, path: str | os.PathLike[str], format_name: str, supported: int, *,
                 version_key: str = "format_version", what: str = "file", hint: str = "") -> int:
    """The file's version, after checking that `document` is a mapping of format `format_name` with an
    integer version this agfprune reads (1..supported)."""
    if not isinstance(document, Mapping) or document.get("format") != format_name:
        found = document.get("format") if isinstance(document, Mapping) else None
        detail = f"; its format is {_shown(found)}" if found is not None else ""
        raise ModelError(f"{path}: not an agfprune {what}{detail}{hint}")
    version = document.get(version_key)
    if isinstance(version, str) and version.strip().isdigit():
        version = int(version)  # safetensors metadata holds strings
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelError(f"{path}: field '{version_key}' must be a positive integer, got {_shown(version)}")
    if version > supported:
        raise ModelError(f"{path}: {what} format version {version} is newer than this agfprune supports "
                         f"({supported}); upgrade agfprune")
    return version


_MISSING = object()


class Fields:
    """Typed access to a mapping read from a file; every failure is a ModelError naming the field.

    `Fields(document, path).integer("epoch", minimum=0)`; `.section("light")` for nested mappings, whose
    errors name the field as `light.arch`.
    """

    def __init__(self, document: Any, path: str | os.PathLike[str], where: str = "") -> None:
        if not isinstance(document, Mapping):
            label = f"field '{where}'" if where else "the document"
            raise ModelError(f"{path}: {label} must be a mapping, got {_shown(document)}")
        self.document = document
        self.path = path
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, expected: str, value: Any = _MISSING) -> ModelError:
        if value is _MISSING:
            return ModelError(f"{self.path}: field '{self.name(key)}' is missing (expected {expected})")
        return ModelError(f"{self.path}: field '{self.name(key)}' must be {expected}, got {_shown(value)}")

    def _get(self, key: str, expected: str, required: bool) -> Any:
        """The value, or _MISSING when it is absent (or null) and not required."""
        if key in self.document and self.document[key] is not None:
            return self.document[key]
        if required:
            raise self.fail(key, expected, self.document.get(key, _MISSING))
        return _MISSING

    def integer(self, key: str, *, minimum: int | None = None, maximum: int | None = None,
                required: bool = True, default: Any = None) -> Any:
        bounds = _bounds(minimum, maximum)
        value = self._get(key, f"an integer{bounds}", required)
        if value is _MISSING:
            return default
        check_integer(value, minimum, maximum, lambda: self.fail(key, f"an integer{bounds}", value))
        return value

    def number(self, key: str, *, minimum: float | None = None, maximum: float | None = None,
               required: bool = True, default: Any = None) -> Any:
        bounds = _bounds(minimum, maximum)
        value = self._get(key, f"a finite number{bounds}", required)
        if value is _MISSING:
            return default
        check_number(value, minimum, maximum, lambda: self.fail(key, f"a finite number{bounds}", value))
        return float(value)

    def string(self, key: str, *, required: bool = True, default: Any = None, choices: Any = None) -> Any:
        expected = f"one of {', '.join(sorted(choices))}" if choices else "a string"
        value = self._get(key, expected, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self.fail(key, expected, value)
        return value

    def boolean(self, key: str, *, required: bool = True, default: Any = None) -> Any:
        value = self._get(key, "true or false", required)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def mapping(self, key: str, *, required: bool = True) -> dict[str, Any]:
        value = self._get(key, "a mapping", required)
        if value is _MISSING:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, "a mapping", value)
        return dict(value)

    def section(self, key: str, *, required: bool = True) -> "Fields":
        return Fields(self.mapping(key, required=required), self.path, self.name(key))

    def sequence(self, key: str, *, required: bool = True, max_length: int | None = None) -> list[Any]:
        value = self._get(key, "a list", required)
        if value is _MISSING:
            return []
        if not isinstance(value, (list, tuple)):
            raise self.fail(key, "a list", value)
        if max_length is not None and len(value) > max_length:
            raise self.fail(key, f"a list of at most {max_length} items", f"{len(value)} items")
        return list(value)

    def input_size(self, key: str = "input_size", *, required: bool = True) -> Any:
        """[channels, height, width], bounded (so that a recorded size cannot ask for terabytes)."""
        expected = f"[channels ≤ {MAX_CHANNELS}, height, width ≤ {MAX_IMAGE_SIDE}]"
        value = self._get(key, expected, required)
        if value is _MISSING:
            return None
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise self.fail(key, expected, value)
        for item, maximum in zip(value, (MAX_CHANNELS, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)):
            check_integer(item, 1, maximum, lambda: self.fail(key, expected, value))
        return [int(v) for v in value]


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" ≥ {minimum}"
    if maximum is not None:
        return f" ≤ {maximum}"
    return ""


def check_integer(value: Any, minimum: float | None, maximum: float | None, error: Any) -> None:
    """Raise error() unless `value` is an int (not a bool) within the bounds."""
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum) \
            or (maximum is not None and value > maximum):
        raise error()


def check_number(value: Any, minimum: float | None, maximum: float | None, error: Any) -> None:
    """Raise error() unless `value` is a finite int/float (not a bool) within the bounds."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise error()


# ---- timm kwargs recorded in files -----------------------------------------------------------------

# The timm_kwargs a recorded model may carry, with their bounds: anything else (`pretrained`,
# `checkpoint_path`, `pretrained_cfg_overlay`...) would make timm fetch or read other files.
_INT_KWARGS = {"num_classes": (0, 100_000), "in_chans": (1, MAX_CHANNELS), "depth": (1, 256),
               "embed_dim": (1, 16_384), "num_heads": (1, 1024), "patch_size": (1, MAX_IMAGE_SIDE),
               "img_size": (1, MAX_IMAGE_SIDE), "reg_tokens": (0, 64), "stem_width": (1, 4096),
               "base_width": (1, 4096), "cardinality": (1, 1024), "output_stride": (1, 64),
               "num_features": (1, 65_536)}
_FLOAT_KWARGS = {"mlp_ratio": (0.0, 64.0), "drop_rate": (0.0, 1.0), "drop_path_rate": (0.0, 1.0),
                 "attn_drop_rate": (0.0, 1.0), "proj_drop_rate": (0.0, 1.0), "pos_drop_rate": (0.0, 1.0),
                 "patch_drop_rate": (0.0, 1.0), "init_values": (0.0, 10.0)}
_BOOL_KWARGS = {"class_token", "qkv_bias", "qk_norm", "no_embed_class", "pre_norm", "fc_norm",
                "dynamic_img_size", "zero_init_last"}
_STR_KWARGS = {"global_pool": ("", "avg", "max", "avgmax", "catavgmax", "token", "map"),
               "stem_type": ("", "deep", "deep_tiered"), "block_type": None}
TIMM_KWARGS = sorted({*_INT_KWARGS, *_FLOAT_KWARGS, *_BOOL_KWARGS, *_STR_KWARGS, "layers", "channels"})


def check_timm_kwargs(kwargs: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """The `timm_kwargs` recorded in a file, if every key is one agfprune passes on and every size is
    bounded; ModelError naming the key otherwise."""
    fields = Fields(kwargs, source, "timm_kwargs")
    unknown = sorted(str(key) for key in fields.document if key not in TIMM_KWARGS)
    if unknown:
        raise ModelError(f"{source}: field 'timm_kwargs' has key(s) {', '.join(unknown)} that agfprune does not "
                         f"pass to timm (allowed: {', '.join(TIMM_KWARGS)})")
    for key, (low, high) in _INT_KWARGS.items():
        if key in ("img_size", "patch_size") and isinstance(fields.document.get(key), (list, tuple)):
            size = fields.sequence(key, max_length=2)
            for side in size:
                check_integer(side, low, high, lambda: fields.fail(key, f"integers in [{low}, {high}]", size))
            continue
        fields.integer(key, minimum=low, maximum=high, required=False)
    for key, (low, high) in _FLOAT_KWARGS.items():
        fields.number(key, minimum=low, maximum=high, required=False)
    for key in _BOOL_KWARGS:
        fields.boolean(key, required=False)
    for key, choices in _STR_KWARGS.items():
        fields.string(key, required=False, choices=choices)
    for key in ("layers", "channels"):
        items = fields.sequence(key, required=False, max_length=16)
        for item in items:
            check_integer(item, 0, 65_536, lambda: fields.fail(key, "a list of integers in [0, 65536]", items))
    return dict(fields.document)


def check_data_config(config: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """A recorded timm data config: bounded input size, finite mean/std of one value per channel."""
    fields = Fields(config, source, "data_config")
    size = fields.input_size(required=False)
    channels = size[0] if size else None
    for key in ("mean", "std"):
        values = fields.sequence(key, required=False, max_length=MAX_CHANNELS)
        expected = f"{channels or 'one per channel'} finite numbers" + (", positive" if key == "std" else "")
        if values and channels is not None and len(values) != channels:
            raise fields.fail(key, expected, values)
        for value in values:
            check_number(value, 1e-12 if key == "std" else None, None, lambda: fields.fail(key, expected, values))
    fields.number("crop_pct", minimum=0.01, maximum=10.0, required=False)
    fields.string("interpolation", required=False)
    fields.string("crop_mode", required=False)
    fields.integer("num_classes", minimum=0, maximum=100_000, required=False)
    return dict(fields.document)
