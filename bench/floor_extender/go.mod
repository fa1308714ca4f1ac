module gpupool/bench/floor_extender

go 1.22
