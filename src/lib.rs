//! agentmeshd: the per-host daemon.
