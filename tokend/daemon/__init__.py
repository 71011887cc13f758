"""The daemon: lifecycle, config watching, systemd, the metrics listener, the doorbell.

``lifecycle`` runs the engine for one config until stopped; ``wakeups`` is what wakes
its loop (signals, the doorbell, reloads) and how it sleeps; ``state_dir`` locks and
opens the state directory; ``watch`` follows the config's folder; ``systemd`` speaks
sd_notify; ``watchdog`` pings systemd's watchdog while the store makes progress;
``metrics_http`` serves ``/metrics`` and the health checks; ``status_file`` is what the
daemon publishes about itself for ``tokend status``; ``doorbell`` is the socket the CLI
rings; ``emergency`` exits at once on a second Ctrl-C; ``listener`` hears the other
hosts' writes on a shared PostgreSQL store. May import the engine and every layer below
it; never the CLI or the sandbox.
"""
