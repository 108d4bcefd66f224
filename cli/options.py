"""CLI options shared by the commands that take a task request (`analyze`, `submit`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from appliance.errors import InvalidRequest
from appliance.schema import TASKS, TaskRequest, request_from_fields


def build_request(**options: Any) -> TaskRequest:
    """A TaskRequest from CLI options, turning validation errors into one readable line."""
    try:
        return request_from_fields(options)
    except InvalidRequest as exc:
        raise click.UsageError(str(exc)) from None


def task_request_options(summarize_help: str) -> Callable[[Callable[..., Any]], Any]:
    """Adds the task options and hands the command one validated `request: TaskRequest`."""

    def decorate(func: Callable[..., Any]) -> Any:
        @functools.wraps(func)
        def wrapper(
            *args: Any,
            task: str,
            prompt: str | None,
            labels: tuple[str, ...],
            fields: tuple[str, ...],
            language: str,
            summarize: bool,
            max_new_tokens: int | None,
            **kwargs: Any,
        ) -> Any:
            request = build_request(
                task=task,
                prompt=prompt,
                labels=labels,
                fields=fields,
                language=language,
                summarize=summarize,
                max_new_tokens=max_new_tokens,
            )
            return func(*args, request=request, **kwargs)

        options = [
            click.option("--task", type=click.Choice(TASKS), default="caption", show_default=True),
            click.option("--prompt", default=None, help="The question, or an extra hint."),
            click.option("--labels", multiple=True, help="Labels for 'classify' (a,b,c)."),
            click.option("--fields", multiple=True, help="Field names for 'extract' (a,b,c)."),
            click.option("--language", default="en", show_default=True),
            click.option("--summarize", is_flag=True, help=summarize_help),
            click.option("--max-new-tokens", type=int, default=None),
        ]
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate
