model broken {
  feature a: categorical(hash = 100) embed 8
  layer mmoe { experts 8 x [16 relu }
  task ctr: binary(label = click)
}
