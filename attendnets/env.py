"""The environment variables the package reads (a light module: the command line's help names them)."""

DATA_ENV = "ATTENDNETS_DATA"  # the dataset root when --data is not given
