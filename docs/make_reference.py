"""Writes ``docs/reference.md``: every setting of every config section and dataset adapter,
with its type, default and the comment the code gives it (the code is the one source;
``tests/test_docs.py`` fails when this page is out of date).

    python docs/make_reference.py > docs/reference.md
"""

from __future__ import annotations

import inspect
import re
import sys

from pydantic import BaseModel

from fined.config import type_name

FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+(?:=.*?)?(?:#\s*(.*))?$")


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class body: trailing, or the comment lines just above."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").strip())
                continue
            m = FIELD.match(line)
            if m and m.group(1) in getattr(klass, "model_fields", {}):
                text = " ".join([*above, m.group(2) or ""]).strip()
                if text:
                    out[m.group(1)] = text
            above = []
    return out


def table(cls: type[BaseModel]) -> list[str]:
    comments = _comments(cls)
    lines = ["| setting | type | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        if field.is_required():
            default = "required"
        else:
            default = repr(field.get_default(call_default_factory=True))
        meaning = comments.get(name, "").replace("|", "\\|")
        kind = type_name(field.annotation).replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | `{default}` | {meaning} |")
    return lines


def page() -> str:
    from fined.data.datasets import dataset_names, dataset_options, dataset_summary
    from fined.data.schema import FeatureSpec, PeriodSpec, PrepareConfig
    from fined.knowledge.adaptor import AdaptorConfig
    from fined.knowledge.knowledge_base import KBConfig
    from fined.models.ctr_model import model_class, model_names
    from fined.protocol.config import RunConfig
    from fined.protocol.strategies import STRATEGIES
    from fined.train.config import KBTrainConfig, TrainConfig

    out = [
        "# Reference: every setting",
        "",
        "Generated from the code by `python docs/make_reference.py > docs/reference.md` (the "
        "test suite fails when it is out of date). Settings are layered in one order: these "
        "defaults < a file < `--quick` < `--set key=value`.",
        "",
        "## Trainer (`train:`, `--set train.KEY=VALUE`)",
        "",
        *table(TrainConfig),
        "",
        "## Knowledge-base trainer (`kb_train:`; `fined kb build --set train.KEY=VALUE`)",
        "",
        "The trainer's settings with other defaults:",
        "",
        *table(KBTrainConfig),
        "",
        "## Knowledge base (`kb:`; `fined kb build --set KEY=VALUE`)",
        "",
        *table(KBConfig),
        "",
        "## Knowledge adaptor (`adaptor:`; `fined train --set adaptor.KEY=VALUE`)",
        "",
        *table(AdaptorConfig),
        "",
        "## Models (`model_settings.MODEL:`; `fined train --set KEY=VALUE`)",
        "",
    ]
    for name in model_names():
        out += [f"### `{name}`", "", *table(model_class(name).config_class), ""]
    out += ["## Strategies of `fined run` (`strategies:`)", ""]
    for kind in STRATEGIES.names():
        strategy = STRATEGIES.get(kind)
        doc = (strategy.__doc__ or "").strip().split("\n\n")[0]
        out += [f"### `{kind}`", "", " ".join(doc.split()), "", *table(strategy.spec_class), ""]
    out += ["## Run config (`fined run CONFIG.yaml`)", "", *table(RunConfig), ""]
    out += ["## Prepare jobs (`fined data prepare CONFIG.yaml`)", "", *table(PrepareConfig), ""]
    out += ["### `periods:`", "", *table(PeriodSpec), "", "### `features:`", "",
            *table(FeatureSpec), ""]  # fmt: skip
    out += ["## Dataset adapters (`--dataset NAME -o KEY=VALUE`, or `options:`)", ""]
    for name in dataset_names():
        options = dataset_options(name)
        out += [f"### `{name}`", "", dataset_summary(name), ""]
        out += [*table(options), ""] if options is not None else ["(no options of its own)", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(page())
