"""caplab command line (placeholder until the runner lands)."""


def main() -> int:
    return 0
