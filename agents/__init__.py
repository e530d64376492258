"""Node-side daemons: the agent, its probes, the workload runner and the node simulator."""
