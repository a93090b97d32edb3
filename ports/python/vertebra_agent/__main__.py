"""``python -m vertebra_agent [--config FILE] [--test-profile] [-v]``.

Settings come from the config file (TOML, or JSON when the name ends in ``.json``), then from
the spawn-contract environment variables (VERTEBRA_SERVER, VERTEBRA_JID, VERTEBRA_PASSWORD,
VERTEBRA_DISPATCHER, VERTEBRA_TEST_PROFILE, VERTEBRA_LOAD_INTERVAL_MS), then from the flags.
Logs go to stderr; SIGTERM ends the agent with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vertebra_agent", description=__doc__.split("\n")[0])
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON configuration file")
    parser.add_argument("--test-profile", action="store_true", help="expose /vertebra/test/*")
    parser.add_argument("--actor", action="append", default=[], metavar="MODULE:CLASS",
                        help="load an actor (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)

    level = logging.WARNING - 10 * min(args.verbose, 2)
    if os.environ.get("VERTEBRA_LOG"):
        level = getattr(logging, os.environ["VERTEBRA_LOG"].upper(), level)
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from .agent import Agent, Config, ConfigError

    try:
        cfg = Config.from_file(args.config) if args.config else Config()
        cfg.apply_env(os.environ)
        if args.test_profile:
            cfg.test_profile = True
        cfg.actors = list(cfg.actors) + args.actor
        cfg.validate()
    except ConfigError as e:
        print(f"vertebra_agent: {e}", file=sys.stderr)
        return 2

    async def run() -> int:
        try:
            agent = Agent(cfg)
        except ConfigError as e:
            print(f"vertebra_agent: {e}", file=sys.stderr)
            return 2
        return await agent.run()

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
