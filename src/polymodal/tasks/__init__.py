"""Tasks: the one place per task (see `polymodal.tasks.base` for the contract).

Importing this package registers the built-in tasks; `get_task(name)` finds any registered one.
"""
from polymodal.tasks.base import (Task, all_tasks, family_of, get_task, offered_methods,  # noqa: F401
                                  on_register, register_task, task_names, task_of_method)
from polymodal.tasks import (captioning, classification, detection, explain, grounding, pretraining,  # noqa: F401
                             retrieval, translation, vqa)

__all__ = ["Task", "register_task", "get_task", "task_names", "all_tasks", "family_of",
           "offered_methods", "on_register", "task_of_method"]
