"""Settings: the dataclass schema with its checks (``schema``), TOML files, presets and ``--set``
(``files``), and the renames of older versions (``compat``)."""
