"""`make fuzz`: many hostile inputs to the five functions; prints one line and exits non-zero when
any rule broke (tests/hostile.py says which rules). `python -m tests.fuzz --inputs 10000`.

The same generators and checks as tests/test_hostile_input.py, with random seeds and many more
examples, against Azurite and the tenant simulator started here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from tests.hostile import Harness

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="total, shared by the five "
                        "functions (default 10,000)")
    parser.add_argument("--show", type=int, default=10, help="problems to print (default 10)")
    args = parser.parse_args(argv)

    from shared.handlers import reset_process_caches
    from simulator.app_settings import local_app_settings
    from simulator.azurite import Azurite
    from simulator.core import TenantSimulator
    from tests.hostile import FUNCTIONS, Harness, register_profiles

    logging.getLogger().addHandler(logging.NullHandler())  # refusals log warnings by design
    logging.getLogger().setLevel(logging.CRITICAL)
    register_profiles()
    per_function = max(1, args.inputs // len(FUNCTIONS))
    with Azurite() as azurite, TenantSimulator.from_file(ROOT / "simulator" /
                                                         "demo_tenant.json") as sim:
        env = local_app_settings(azurite, sim, queue="fuzz-photo-sync", table="fuzzstate")
        os.environ.update(env)
        reset_process_caches()
        harness = Harness(env, sim)
        try:
            harness.warm_up()
            for name in FUNCTIONS:
                run(harness, name, per_function)
        finally:
            harness.close()
    tally = harness.tally
    print(tally.line(), flush=True)
    print(f"  slowest input: {tally.slowest_input}", file=sys.stderr)
    for problem in tally.problems()[:args.show]:
        print("  " + problem, file=sys.stderr)
    return 1 if tally.problems() or tally.slowest >= 1.0 else 0


def run(harness: Harness, name: str, examples: int) -> None:
    """Feed `examples` generated inputs to one function; problems are tallied, not raised."""
    @settings(settings.get_profile("fuzz"), max_examples=examples)
    @given(st.data())
    def one_input(data: st.DataObject) -> None:
        body, params = data.draw(harness.inputs(name))
        harness.call(name, body, params)

    one_input()


if __name__ == "__main__":
    sys.exit(main())
