"""The Jupyter kernel delegate of query mode: the actor, its channel thread and the kernel message mapping."""
