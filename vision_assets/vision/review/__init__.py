"""The review loop: tasks out to Label Studio, people's decisions back, applied where they still hold, measured."""
