"""The operators' web console of the monitor: sign-in, review queue, cases, account
lookup, kill switches, live block-rate charts, alerts and the audit log (app.py),
over the protocol-free `services.monitor.operations`."""
