"""Rendering benchmark results into the generated section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

BEGIN_MARKER = "<!-- benchmarks:generated:begin -->"
END_MARKER = "<!-- benchmarks:generated:end -->"
DEFAULT_DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _format_value(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.0f}x" if value >= 100 else f"{value:.2f}x"
    if unit == "workers":
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.2f} {unit}"


def _verdict(figure: dict[str, Any]) -> str:
    if figure["met"] is None:
        return "(information)"
    return "met" if figure["met"] else "**missed**"


def _load_text(load: list[float] | None) -> str:
    return "unknown" if not load else " / ".join(f"{value:.2f}" for value in load)


def _commands_text(results: dict[str, Any]) -> str:
    """Name the command of every benchmark; a run merged from `--only` runs has several."""
    commands: dict[str, list[str]] = {}
    for name, result in results["benchmarks"].items():
        commands.setdefault(result.get("command", results["machine"]["command"]), []).append(name)
    if len(commands) == 1:
        return f"`{next(iter(commands))}`"
    return "; ".join(f"`{command}` ({', '.join(names)})" for command, names in commands.items())


def render_machine(results: dict[str, Any]) -> list[str]:
    """Return markdown lines of the run and machine table."""
    machine = results["machine"]
    flags = ", ".join(machine["cpu_flags"]) or "none of avx2, avx512, amx"
    memory = f"{machine['memory_gib']:.1f} GiB" if machine.get("memory_gib") else "unknown"
    return [
        "| run | |",
        "| --- | --- |",
        f"| date of the last run | {machine['date_utc']} |",
        f"| command | {_commands_text(results)} ({results['mode']} mode) |",
        f"| commit | {machine.get('git_commit') or 'unknown'} |",
        f"| CPU | {machine['cpu_model']} ({flags}) |",
        f"| cores | {machine['logical_cores']} logical, {machine['usable_cores']} usable by this process |",
        f"| memory | {memory} |",
        f"| software | Python {machine['python']}, torch {machine['torch']}, smp {machine['smp']}, "
        f"timm {machine['timm']} |",
        f"| torch threads | {machine['torch_threads']} (ratios read from {results['clock']} time) |",
        f"| load average (1, 5, 15 min) at start | {_load_text(machine.get('load_average_1_5_15_min'))} |",
        f"| load average at end | {_load_text(results.get('load_average_end'))} |",
    ]


def render_figures(results: dict[str, Any]) -> list[str]:
    """Return markdown lines of the figures table, then one line per benchmark that failed."""
    lines = [
        "| what | compared with | measured | target | verdict | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    failures = []
    for name, result in results["benchmarks"].items():
        if "error" in result:
            failures.append(f"- `{name}` failed: {result['error']}")
            continue
        for figure in result["figures"]:
            cells = [
                figure["what"], figure["compared_with"], _format_value(figure["value"], figure["unit"]),
                figure["target"] or "", _verdict(figure), figure["detail"],
            ]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if failures:
        lines += ["", "Benchmarks that did not finish:", "", *failures]
    return lines


def render(results: dict[str, Any]) -> str:
    """Return the generated section, markers included."""
    lines = [
        BEGIN_MARKER,
        "<!-- Written by `python -m benchmarks.run` from its JSON results; edits here are overwritten. -->",
        "",
        *render_machine(results),
        "",
        *render_figures(results),
        "",
        END_MARKER,
    ]
    return "\n".join(lines)


def update_docs(results: dict[str, Any], docs_path: Path = DEFAULT_DOCS) -> None:
    """Replace the generated section of `docs_path` with tables of `results`.

    Raises:
        ValueError: If the file exists but lacks the begin or end marker.
    """
    section = render(results)
    if not docs_path.exists():
        docs_path.parent.mkdir(parents=True, exist_ok=True)
        docs_path.write_text(f"# Benchmarks\n\n{section}\n", encoding="utf-8")
        return

    text = docs_path.read_text(encoding="utf-8")
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begin < 0 or end < begin:
        raise ValueError(
            f"{docs_path} has no generated section: add the lines {BEGIN_MARKER} and {END_MARKER} where the "
            "tables belong, or remove the file to have it created."
        )
    docs_path.write_text(text[:begin] + section + text[end + len(END_MARKER):], encoding="utf-8")
    _logger.info("Updated the tables of %s", docs_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the tables of docs/benchmarks.md from a results file.")
    parser.add_argument("results", type=Path, help="JSON written by `python -m benchmarks.run`.")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS,
                        help=f"Markdown file to update (default: {DEFAULT_DOCS}).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    update_docs(json.loads(args.results.read_text(encoding="utf-8")), args.docs)


if __name__ == "__main__":
    main()
