"""Comparative benchmarks: engine against Docker and Podman on the same machine.

``python bench/run.py --help`` for usage; see ``bench/README.md`` for what is measured
and the latest results. The modules are:

- :mod:`bench.stats`: pure helpers (median, p90, ratios, the report table and JSON);
- :mod:`bench.proc`: process, memory, mount and cgroup helpers over ``/proc`` and ``/sys``;
- :mod:`bench.targets`: one class per engine under test, each with its own daemon,
  temporary roots and CLI;
- :mod:`bench.measure`: the measurements, written once against the target interface.
"""
