"""Policy texts the tests share."""

#: A policy whose only rule has a key no rule type knows (`colour`): constraints[0] is invalid.
BROKEN_POLICY = """\
name: broken
version: 1
slate_size: 10
objective:
  weights: {p_click: 1.0}
constraints:
  - name: cap
    type: max_count
    attribute: category
    max: 2
    colour: red
"""

#: BROKEN_POLICY with a second bad rule: constraints[1].min is 0 (line 16).
TWO_ERRORS_POLICY = BROKEN_POLICY + """\
  - name: few
    type: min_count
    attribute: seller_tier
    value: new
    min: 0
"""
