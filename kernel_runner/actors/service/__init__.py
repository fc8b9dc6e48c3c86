"""One service process: prestart, spawn, port wait, exit report, graceful stop of its tree."""
