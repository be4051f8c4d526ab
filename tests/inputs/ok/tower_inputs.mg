// Towers may read an earlier layer; a layer that feeds no tower gets a warning.
model towers {
  synthetic categorical
  feature a: categorical(hash = 100) embed 8
  layer bottom: shared_bottom { units [16] }
  layer mix: mmoe { experts 4 x [8] }
  layer unused: moe { experts 2 x [4] }
  task ctr: binary(label = click) input bottom tower [4]
  task cvr: binary(label = buy) input mix
}
