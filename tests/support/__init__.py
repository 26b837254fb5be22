"""What the tests share beyond conftest.py's fixtures and commands: a real browser driving report.html (browser.py),
local copies of Hub data sets and checkpoints in the Hub's layout (hub_fixtures.py), and the FSDP worker two
processes run under torchrun (fsdp_worker.py)."""
