"""Alerts: a pure engine (:mod:`.engine`), the rules (:mod:`.rules`), the facts they look at
(:mod:`.facts`), the monitor that runs them (:mod:`.monitor`) and the channels (:mod:`.channels`,
imported only when one is configured)."""
