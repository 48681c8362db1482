"""``fastgen info`` (also ``python -m fastgen info``)."""
from __future__ import annotations

import argparse
import json


def _print_info(as_json: bool) -> int:
    from fastgen import info

    report = info()
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    for section in ("versions", "machine"):
        print(f"{section}:")
        for key, value in report[section].items():
            print(f"  {key:<16} {value if value is not None else 'not installed'}")
    print("backends:")
    for name, why in report["backends"].items():
        print(f"  {name:<32} {'available' if why is None else 'unavailable: ' + why}")
    print(f"FASTGEN_BACKEND={report['forced_backend']}")
    print("ops:")
    for op, backends in report["ops"].items():
        print(f"  fastgen::{op}")
        for backend, why in backends.items():
            print(f"    {backend:<8} {'available' if why is None else 'unavailable: ' + why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info_cmd = commands.add_parser("info", help="versions, backends per op, and why any is unavailable")
    info_cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _print_info(args.json)
    return 2
