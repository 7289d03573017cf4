"""The chaos suite (issue 13): the whole mesh under `forge up`, a steady load from two tenants,
and one fault at a time (SIGKILL, or SIGSTOP for 20 s) of each process; after each, nothing
acknowledged is lost, nothing is half a version, no call hung or ended UNKNOWN/INTERNAL, no
session or process is left behind, and every service is SERVING again. bench/chaos.py runs the
same rounds many times."""
