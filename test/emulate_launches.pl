# For the CPU emulation of llmc's kernels (test/cuda_host_emulation.h): the Makefile copies a
# kernel header through this (perl -0p) into build/emu/, turning each launch statement
#   kernel<<<grid, block, smem, stream>>>(args);
# into
#   emu_launch_helper(grid, block, smem, stream) = [=] { kernel(args); };
# so the emulation runs the launchers as written (template arguments are deduced as nvcc would). The
# call holds copies of the arguments, as a launch does: a stream capture keeps it for later.
# Line breaks inside a launch stay where they were: the compiler's line numbers are the header's.
s/([A-Za-z_]\w*(?:<[^<>;()]*>)?)<<<(.*?)>>>\((.*?)\);/emu_launch_helper($2) = [=] { $1($3); };/gs;
# After each __shared__ declaration, emu_shared_poison (test/cuda_host_emulation.h) for each variable
# it declares. A declaration must start a line and end on it: any other use of __shared__ outside a
# comment stops the copy.
s{^([ \t]*__shared__[ \t][^;\n]*;)}{$1 . shared_poison_calls($1)}gme;
for (split /\n/) {
    die "emulate_launches.pl: a __shared__ declaration not on a line of its own: $_\n" if /^\s*[^\/\s].*\b__shared__\b/ && !/emu_shared_poison/;
}
sub shared_poison_calls {
    my $decl = shift;
    $decl =~ s/^\s*__shared__\s+//;
    $decl =~ s/__align__\([^)]*\)//g;
    $decl =~ s/\[[^\]]*\]//g;
    $decl =~ s/;$//;
    die "emulate_launches.pl: a __shared__ declaration it cannot read: $decl\n" if $decl =~ /[<>=(]/;
    my $calls = "";
    for my $part (split /,/, $decl) {
        $part =~ /(\w+)\s*$/ or die "emulate_launches.pl: no name in the __shared__ declaration part '$part'\n";
        $calls .= " emu_shared_poison(&$1, sizeof($1));";
    }
    return $calls;
}
