"""`cairn`: the command line a person uses (today `cairn login` and `cairn logout`)."""
