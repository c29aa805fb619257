"""User-adjustable behaviour: covidx.settings.progress_style = 'keras3' | 'tf2'."""


class Settings:
    def __init__(self):
        self.progress_style = "keras3"  # the progress bar of Keras 3; 'tf2' gives tf.keras 2.x's

    def __repr__(self):
        return "covidx.settings(progress_style=%r)" % self.progress_style


settings = Settings()
