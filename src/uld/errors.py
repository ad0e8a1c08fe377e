"""The one exception type users see: the CLI prints its message and exits non-zero."""


class UldError(Exception):
    """A problem the user can fix; the message is one sentence saying what is wrong and what to do."""


def first_detail(error: BaseException) -> str:
    """A library's error as one clause for a UldError. torch's load_state_dict says "Error(s) in loading
    state_dict for X:" and then a line per tensor: the first of those lines (and how many more) stands for the
    whole. W&B goes on with advice of its own ("No API key configured. Use `wandb login`..."): its first
    sentence only."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        more = f", and {len(lines) - 2} more" if len(lines) > 2 else ""
        return f"{lines[1].split('. ')[0].rstrip('.')}{more}"
    return " ".join(lines).split(". ")[0].rstrip(".")
