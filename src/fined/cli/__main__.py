from fined.cli.app import run

run()
