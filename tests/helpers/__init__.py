"""Helpers shared by the tests that run real `fedmezo` processes on loopback.

Importable as `helpers.<module>` because pyproject.toml puts `tests/` on pytest's pythonpath:
`processes` (ports, subprocesses, waiting), `federation` (a server and its client daemons),
`threaded_server` (an in-process server on a loopback port for synchronous tests), `pki` (openssl
CAs and certificates), `scripted_client` (a test-owned client over the real client link), `tcp_proxy`
(a proxy that cuts connections) and `state_db` (reading a server's state dir the way an auditor would).
"""
