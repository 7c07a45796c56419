#compdef PROG
# zsh completion for PROG: asks PROG itself (urfave/cli's
# --generate-bash-completion) what may follow the words typed so far.
local -a opts
local cur=${words[CURRENT]}
if [[ $cur == -* ]]; then
	opts=("${(@f)$(${words[1,CURRENT-1]} $cur --generate-bash-completion 2>/dev/null)}")
else
	opts=("${(@f)$(${words[1,CURRENT-1]} --generate-bash-completion 2>/dev/null)}")
fi
if [[ -n ${opts[1]} ]]; then
	_describe 'values' opts
else
	_files
fi
