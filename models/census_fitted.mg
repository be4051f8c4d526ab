// The census MMoE of census_income_mmoe.mg with nothing about the data typed in:
// z-scored columns take their mean and standard deviation, and every categorical its
// vocabulary (most frequent first, plus a row for unseen values), from the training
// file when training starts (printed as `fitted on the training rows`, pinned into the
// bundle's spec; `multigate fit` prints them). Same protocol: train on the 199,523
// training rows, select on paper-split/validation.gz, report on paper-split/test.gz.

model census_fitted {
  data csv(
    train = ["../../shared/data/census-income-kdd/census-income.data.gz"],
    validation = "../../shared/data/census-income-kdd/paper-split/validation.gz",
    test = "../../shared/data/census-income-kdd/paper-split/test.gz",
    header = false,
    columns = [
      "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour",
      "hs_college", "marital_stat", "major_ind_code", "major_occ_code", "race",
      "hisp_origin", "sex", "union_member", "unemp_reason", "full_or_part_emp",
      "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
      "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
      "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same",
      "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father", "country_mother",
      "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits",
      "weeks_worked", "year", "income_50k",
    ],
  )

  feature age: dense(transform = zscore)
  feature class_worker: categorical embed 4
  feature det_ind_code: categorical embed 4
  feature det_occ_code: categorical embed 4
  feature wage_per_hour: dense(transform = log1p)
  feature hs_college: categorical embed 4
  feature major_ind_code: categorical embed 4
  feature major_occ_code: categorical embed 4
  feature race: categorical embed 4
  feature hisp_origin: categorical embed 4
  feature sex: categorical embed 4
  feature union_member: categorical embed 4
  feature unemp_reason: categorical embed 4
  feature full_or_part_emp: categorical embed 4
  feature capital_gains: dense(transform = log1p)
  feature capital_losses: dense(transform = log1p)
  feature stock_dividends: dense(transform = log1p)
  feature tax_filer_stat: categorical embed 4
  feature region_prev_res: categorical embed 4
  feature state_prev_res: categorical embed 4
  feature det_hh_fam_stat: categorical embed 4
  feature det_hh_summ: categorical embed 4
  feature mig_chg_msa: categorical embed 4
  feature mig_chg_reg: categorical embed 4
  feature mig_move_reg: categorical embed 4
  feature mig_same: categorical embed 4
  feature mig_prev_sunbelt: categorical embed 4
  feature num_emp: dense(transform = zscore)
  feature fam_under_18: categorical embed 4
  feature country_father: categorical embed 4
  feature country_mother: categorical embed 4
  feature country_self: categorical embed 4
  feature citizenship: categorical embed 4
  feature own_or_self: categorical embed 4
  feature vet_question: categorical embed 4
  feature vet_benefits: categorical embed 4
  feature weeks_worked: dense(transform = zscore)
  feature year: categorical embed 4

  layer mmoe { experts 8 x [16] relu }

  task income: binary(label = "income_50k" == "50000+.") tower [8] weight 1.0
  task never_married: binary(label = "marital_stat" == "Never married") tower [8] weight 1.0

  train { adam batch 512 epochs 10 seed 42 }
}
