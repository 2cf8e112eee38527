# For the CPU emulation of llmc's kernels (test/cuda_host_emulation.h): the Makefile copies a
# kernel header through this (perl -0p) into build/emu/, turning each launch statement
#   kernel<<<grid, block, smem, stream>>>(args);
# into
#   emu_launch_helper(grid, block, smem, stream) = [=] { kernel(args); };
# so the emulation runs the launchers as written (template arguments are deduced as nvcc would). The
# call holds copies of the arguments, as a launch does: a stream capture keeps it for later.
# Line breaks inside a launch stay where they were: the compiler's line numbers are the header's.
s/([A-Za-z_]\w*(?:<[^<>;()]*>)?)<<<(.*?)>>>\((.*?)\);/emu_launch_helper($2) = [=] { $1($3); };/gs;
