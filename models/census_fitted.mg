// The census MMoE of census_income_mmoe.mg with nothing about the data typed in:
// z-scored columns take their mean and standard deviation, and every categorical its
// vocabulary (most frequent first, plus a row for unseen values), from the training
// file when training starts (printed as `fitted on the training rows`, pinned into the
// bundle's spec; `multigate fit` prints them). Same protocol: train on the 199,523
// training rows, select on paper-split/validation.gz, report on paper-split/test.gz.
// Features with the same settings are declared together (`also` in TOML, `feature a, b`
// in the DSL): 11 declarations for 39 features, the same model as one per feature.

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
  feature class_worker, det_ind_code, det_occ_code: categorical embed 4
  feature wage_per_hour: dense(transform = log1p)
  feature hs_college, major_ind_code, major_occ_code, race, hisp_origin, sex, union_member,
    unemp_reason, full_or_part_emp: categorical embed 4
  feature capital_gains, capital_losses, stock_dividends: dense(transform = log1p)
  feature tax_filer_stat, region_prev_res, state_prev_res, det_hh_fam_stat, det_hh_summ,
    mig_chg_msa, mig_chg_reg, mig_move_reg, mig_same, mig_prev_sunbelt: categorical embed 4
  feature num_emp: dense(transform = zscore)
  feature fam_under_18, country_father, country_mother, country_self, citizenship,
    own_or_self, vet_question, vet_benefits: categorical embed 4
  feature weeks_worked: dense(transform = zscore)
  feature year: categorical embed 4

  layer mmoe { experts 8 x [16] relu }

  task income: binary(label = "income_50k" == "50000+.") tower [8] weight 1.0
  task never_married: binary(label = "marital_stat" == "Never married") tower [8] weight 1.0

  train { adam batch 512 epochs 10 seed 42 }
}
