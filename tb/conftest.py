"""pytest options of the RTL regression: the run's one seed (tb.seeding).

    pytest tb --seed 1234        (or COSIM_SEED=1234 pytest tb)

Without either, a seed is chosen once for the session; the header of the pytest output
prints it, so any run can be repeated exactly.
"""

from __future__ import annotations

import pytest

from tb.seeding import SEED_ENV, choose_seed, parse_seed

_SEED = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seed", default=None,
                     help=f"the seed of every cocotb run (default: ${SEED_ENV}, else random)")


def pytest_configure(config: pytest.Config) -> None:
    given = config.getoption("--seed")
    try:
        seed = choose_seed(None if given is None else parse_seed(given, "--seed"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SEED] = seed


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash[_SEED]
    return f"cocotb seed: {seed} (repeat with --seed {seed} or {SEED_ENV}={seed})"


@pytest.fixture(scope="session")
def run_seed(request: pytest.FixtureRequest) -> int:
    return request.config.stash[_SEED]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Also at the end: `-q` (make test) hides the header.
    terminalreporter.write_line(pytest_report_header(terminalreporter.config))
