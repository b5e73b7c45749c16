"""The ``fined`` command: the Typer app, shared helpers and the entry point.

Every error a user or their environment can cause ends in one line ``error: ...`` and exit
code 2 (``main`` is the one boundary where they are caught); anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer
import yaml
from rich.console import Console

from fined.config import safe_yaml
from fined.errors import FinedError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="CTR prediction on drifting data, with a parametric knowledge base of the past (FINED).",
)


def _version(value: bool) -> None:
    if value:
        from fined import __version__

        console.print(f"fined {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """CTR prediction on drifting data, with a parametric knowledge base of the past (FINED)."""


# Tables stay readable when the output is piped or logged (rich would default to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


DEVICE_HELP = "Where to compute: auto (a GPU if there is one), cpu, cuda or cuda:N."
RUN_DEVICE_HELP = "auto, cpu, cuda or cuda:N (default: the config's device:)."


def parse_pairs(pairs: list[str], flag: str) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars (numbers, booleans, lists)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FinedError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key] = safe_yaml(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def load_settings(path: Path | None, sets: list[str]) -> tuple[dict, dict]:
    """A component's settings and the trainer's: a YAML file (the component's keys at the top
    level, the trainer's under ``train:``), then ``--set key=value`` (``train.key=value``)."""
    from fined.config import load_yaml

    own: dict = {}
    trainer: dict = {}
    if path is not None:
        doc = load_yaml(path) or {}
        if not isinstance(doc, dict):
            raise FinedError(f"{path}: expected a mapping of settings")
        trainer = doc.pop("train", None) or {}
        if not isinstance(trainer, dict):
            raise FinedError(f"{path}: train: expected a mapping of trainer settings")
        own = doc
    for key, value in parse_pairs(sets, "--set").items():
        (trainer if key.startswith("train.") else own)[key.removeprefix("train.")] = value
    return own, trainer


_ARGV: list[str] = []  # this invocation's arguments, for relaunching it under torchrun


def launch_workers(nproc: int, out: Path) -> None:
    """``--nproc N``: run this very command in N processes under torchrun (one machine) and
    return when they are done. Worker logs go to ``OUT/workers.log``; a failed worker ends in
    one error line that says how to resume."""
    import subprocess

    from fined.workers import parent_death_signal

    args, skip = [], False
    for a in _ARGV:  # drop --nproc N / --nproc=N
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "fined.cli", *args]  # fmt: skip
    log = out / "workers.log"
    with log.open("wb") as sink:
        # torchrun stops its workers on SIGTERM: sent when this process ends, even by kill -9
        done = subprocess.run(cmd, stderr=sink, check=False, preexec_fn=parent_death_signal())
        code = done.returncode
    if code == 0:
        return
    text = log.read_text(errors="replace")
    said = re.findall(r"^error: (.+)$", text, re.M)  # a worker's own one-line user error
    if said:
        raise FinedError(said[-1].strip())
    cause = re.search(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", text, re.S)
    who, how = "a worker", ""
    if cause:
        code = int(cause.group(2))
        who = f"worker rank {cause.group(1)}"
        how = f" (killed by signal {-code})" if code < 0 else f" (exit code {code})"
    raise FinedError(
        f"{who} of {nproc} failed{how}; the others were stopped. Details in {log}. "
        f"Checkpoints up to the last finished epoch are in {out}: rerun with --resume"
    )


def print_error(message: str) -> None:
    """One line ``error: ...`` on stderr (the message is shown as is, never as markup)."""
    from rich.text import Text

    line = " ".join(message.split())  # one line, whatever the message holds
    err_console.print(Text.assemble(("error:", "bold red"), " ", line), soft_wrap=True)


def print_warning(message: str) -> None:
    """One line ``warning: ...`` on stderr: something asked for that will not happen."""
    from rich.text import Text

    line = " ".join(message.split())
    err_console.print(Text.assemble(("warning:", "bold yellow"), " ", line), soft_wrap=True)


def run_device(config_device: str, option: str | None, config: Path, cuda_graphs: bool):
    """Where a ``fined run`` computes: ``--device`` if given, else the config's ``device:``,
    checked before anything is claimed and refused as what set it; CUDA graphs asked of a
    device without CUDA are said once (``fined train`` says it of each fit)."""
    from fined.devices import resolve_device

    if option is not None:
        device = resolve_device(option)
    else:
        device = resolve_device(config_device, f"{config}: device:")
    if cuda_graphs and device.type != "cuda":
        print_warning(
            f"train.cuda_graphs: eager steps (CUDA graphs need a CUDA device, not {device.type})"
        )
    return device


def main(argv: list[str] | None = None) -> int:
    """Entry point, and the one error boundary: whatever a user or their environment can
    cause (a bad option or value, a bad file, permission denied, a full disk) ends in one
    line ``error: ...`` and exit code 2; anything else is a bug and keeps its traceback."""
    from fined.io import describe_os_error
    from fined.limits import fit_to_address_space

    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        fit_to_address_space()  # before any library with a thread pool loads
        done = app(args=argv, prog_name="fined", standalone_mode=False)
        return done if isinstance(done, int) else 0  # --help and Ctrl-C return their codes
    except FinedError as err:
        print_error(str(err))
    except typer.TyperException as err:  # the command line itself: an unknown option, ...
        if type(err).__name__ == "NoArgsIsHelpError":
            err_console.print(err.format_message(), markup=False, highlight=False)
            return 2
        ctx = getattr(err, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print_error(_sentence(err.format_message()) + hint)
    except OSError as err:  # the environment: permissions, a full disk, a vanished file
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print_error(f"{where}{describe_os_error(err)}")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except (MemoryError, RuntimeError) as err:  # RuntimeError: only PyTorch's failed allocations
        said = _out_of_memory(err)
        if said is None:
            raise
        print_error(said)
    except ImportError as err:  # a broken install, or a memory limit too low to load a library
        print_error(
            f"could not load {err.name or 'a library'} ({err}): reinstall it, or raise the "
            "memory limit (ulimit -v) if one is set"
        )
    return 2


def _out_of_memory(err: BaseException) -> str | None:
    """The one line for an allocation the machine (or its ulimit) refused; None when ``err``
    is not one."""
    text = str(err)
    if not isinstance(err, MemoryError) and "can't allocate memory" not in text:
        return None
    size = re.search(r"allocate (\d+) bytes", text)
    asked = f" ({int(size.group(1)) / 2**30:,.1f} GiB asked at once)" if size else ""
    return (
        f"out of memory{asked}: lower the sizes that set it (embedding_dim, batch_size, "
        "chunk_rows, the number of rows) or free memory"
    )


def _sentence(message: str) -> str:
    """Click's messages as one lower-case clause: ``No such option: --x Did you mean --y?``
    becomes ``no such option: --x (did you mean --y?)``."""
    text = " ".join(message.split())
    head, sep, guess = text.partition(" Did you mean")
    if sep:
        text = f"{head} (did you mean{guess})"
    elif found := re.search(r"\(Possible options: (.+)\)$", text):
        choices = found.group(1).split(", ")
        names = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        text = f"{text[: found.start()].rstrip()} (did you mean {names}?)"
    return text[:1].lower() + text[1:]


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
