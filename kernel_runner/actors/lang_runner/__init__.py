"""The language runner: the queue of clean/build/exec/code, batch jobs and their input socket."""
