"""The door to Ray: the trial Ray runs, the search and the Tuner, and the cluster (connection,
storage and resource checks, remote tasks). Nothing else in the package imports Ray."""
