"""The lab: scenarios, runner, CLI and reports over server, loadgen, eventlog and model."""
