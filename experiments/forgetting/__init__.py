"""The forgetting measurement of a search (``--mode=forgetting``): ``protocol`` (paired runs, the Diff metric)."""
