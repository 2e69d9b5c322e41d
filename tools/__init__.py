"""Tools around the service: benchmarks, drills and the processes they and the tests start."""
